#!/bin/sh
# Install the plainvm OCF resource agent on this node (run it on every cluster node, as root):
#   integrations/pacemaker/install.sh            -> /usr/lib/ocf/resource.d/plainvm/plainvm
# OCF_ROOT (default /usr/lib/ocf) and DESTDIR (for packaging) move the target.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir="${DESTDIR:-}${OCF_ROOT:-/usr/lib/ocf}/resource.d/plainvm"
install -d -m 755 "$dir"
install -m 755 "$here/plainvm" "$dir/plainvm"
echo "installed $dir/plainvm (use it as ocf:plainvm:plainvm)"

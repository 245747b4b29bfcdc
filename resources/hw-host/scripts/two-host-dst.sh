# On the second of two L1 hosts (see two-host-src.sh): receive the guest and let it finish.
tap pvtap0 10.0.2.1/24 02:00:00:00:01:01
# Nothing of the shared disk may be cached here from before the migration (this kernel read its
# first and last blocks when it found the disk): drop it, so every read after the move goes to
# the image the source wrote.
blockdev --flushbufs /dev/vda
# Both hosts hold the same test key (keyed migration, protocol 4).
echo 6d6967726174696f6e2d746573742d6b65792d666f722d74776f2d686f737473 > /tmp/mig.key
# The incoming VM's tap and disk are this host's own (--allow-tap, --set); the stream is keyed.
start dst 900 plainvm receive --key /tmp/mig.key --listen tcp:192.168.77.2:7000 --allow-tap pvtap0 \
    --set 'disks=[{"path":"/dev/vda"}]'
wait_line dst "waiting for a migration" 60 || exit 1
(while :; do echo READY | nc -l -p 7001 > /dev/null; done) &
wait_run dst 880
kill $! 2>/dev/null

//! The command line's `key=value` flags and the JSON config: --disk, --net, --vsock, --balloon,
//! --memory, --cpu-affinity, --set, --cgroup, --jail with --jail-dir, and a whole config file
//! validated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plainvm::config;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the parser. Changing the cases sends the committed seeds to other
    // parsers: rewrite their first bytes with them (as was done when 8 cases became 10).
    let (which, rest) = data.split_first().unwrap_or((&0, &[]));
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 10 {
        0 => drop(config::disk::parse_disk(s)),
        1 => drop(config::net::parse_net(s)),
        2 => drop(config::vsock::parse_vsock(s)),
        3 => {
            drop(config::balloon::parse_balloon(s).map(|b| config::balloon::validate(&b, 1 << 30)))
        }
        4 => drop(config::size::parse_memory(&serde_json::Value::String(
            s.to_string(),
        ))),
        5 => drop(config::cpu_list::parse(s)),
        6 => {
            let base = config::FileConfig::default().validate();
            if let (Ok(o), Ok(cfg)) = (config::overrides::Overrides::parse(&[s.to_string()]), base)
            {
                let _ = o.apply(cfg).map(|c| c.check());
            }
        }
        7 => drop(config::cgroup::parse_cgroup(s).map(|c| c.limits())),
        8 => {
            // `--jail IDS --jail-dir DIR`: the text up to the first newline is IDS, the rest DIR.
            let (ids, dir) = s.split_once('\n').unwrap_or((s, ""));
            let dir = (!dir.is_empty()).then(|| std::path::Path::new(dir));
            drop(config::jail::from_flags(Some(ids), dir, None));
        }
        _ => {
            if let Ok(f) = serde_json::from_str::<config::FileConfig>(s) {
                let _ = f.validate();
            }
        }
    }
});

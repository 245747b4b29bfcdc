//! plainvm: a small virtual machine monitor on Linux KVM.
//!
//! Folders depend on each other one way only, from the command line down to the configuration
//! (checked by the test below; `docs/architecture.md` draws it):
//! `cli` → `api` → `vm` → {`vcpu`, `device_manager`} → {`boot`, `snapshot`, `migration`,
//! `host`} → {`config`, `memory`, `seccomp`}.

pub mod api;
pub mod boot;
pub mod cli;
pub mod config;
pub mod device_manager;
pub mod host;
pub mod memory;
pub mod migration;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

#[cfg(test)]
mod tests {
    /// Each folder's layer: a folder may use folders of lower layers only.
    const LAYERS: [(&str, u8); 12] = [
        ("config", 0),
        ("memory", 0),
        ("seccomp", 0),
        ("host", 1),
        ("boot", 1),
        ("snapshot", 1),
        ("migration", 1),
        ("vcpu", 2),
        ("device_manager", 2),
        ("vm", 3),
        ("api", 4),
        ("cli", 5),
    ];

    fn layer(folder: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(f, _)| *f == folder)
            .map(|l| l.1)
            .unwrap_or_else(|| panic!("{folder} is not in LAYERS: give the new folder a layer"))
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn folders_depend_on_each_other_one_way() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut wrong = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap();
            let Some(folder) = rel.parent().and_then(|p| p.iter().next()) else {
                continue; // main.rs, lib.rs
            };
            let folder = folder.to_str().unwrap();
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let used: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used.is_empty() || used == folder {
                    continue;
                }
                if layer(&used) >= layer(folder) {
                    wrong.push(format!("{} uses crate::{used}", rel.display()));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "dependencies against the layers: {wrong:#?}"
        );
    }
}

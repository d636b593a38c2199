//! Reloads the configuration when its file changes. The directory is
//! watched, not the file: editors and Kubernetes replace a file by renaming
//! another over it, which a watch on the file itself would not see.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::live::Live;

/// Changes closer together than this are one change: an editor writes,
/// renames and touches in quick succession.
const SETTLE: Duration = Duration::from_millis(200);

/// Watches `file` until the returned watcher is dropped.
pub fn config_file(file: &Path, live: Arc<Live>) -> Result<notify::RecommendedWatcher, String> {
    let name = file
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| format!("{} names no file", file.display()))?;
    let dir: PathBuf = crate::live::base_dir(Some(file));
    let (changed, changes) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        let ours = event
            .paths
            .iter()
            .any(|path| path.file_name() == Some(name.as_os_str()));
        let relevant = event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove();
        if ours && relevant {
            let _ = changed.send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    std::thread::Builder::new()
        .name("ferryman-config-watch".into())
        .spawn(move || {
            // Ends when the watcher, and with it the sender, is dropped.
            while changes.recv().is_ok() {
                while changes.recv_timeout(SETTLE).is_ok() {}
                live.reload("file");
            }
        })
        .map_err(|e| format!("cannot watch the config file: {e}"))?;
    Ok(watcher)
}

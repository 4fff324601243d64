//! This machine as a job store sees it: a host name that also names the boot and the process
//! id namespace (so two machines that share a host name, one machine before and after a
//! reboot, or two containers that share a host name and a kernel are told apart), and
//! whether a process of this boot and namespace is still alive.
//!
//! Both are known on Linux only (`/proc/sys/kernel/random/boot_id`, `/proc/self/ns/pid`,
//! `/proc/<pid>`); elsewhere a runner that died is taken over by the lease rule alone.

use std::sync::OnceLock;

/// This boot and process id namespace (`1a2b3c4d5e6f/4026531836`), when the system tells:
/// the processes whose ids mean something here.
fn boot_and_namespace() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id: String = id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(12)
            .collect();
        // `pid:[4026531836]`: the namespace's inode.
        let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let ns: String = ns
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        (id.len() == 12 && !ns.is_empty()).then(|| format!("{id}/{ns}"))
    })
    .as_deref()
}

/// The name a runner on this machine registers under: `name` and the boot, as
/// `name (boot 1a2b3c4d5e6f/4026531836)`, or `name` alone where the boot is unknown.
pub fn identity(name: &str) -> String {
    match boot_and_namespace() {
        Some(boot) => format!("{name} (boot {boot})"),
        None => name.to_string(),
    }
}

/// Whether `host` (a registered runner's) is this machine in this boot and namespace.
pub fn is_this_boot(host: &str) -> bool {
    boot_and_namespace().is_some_and(|boot| host.ends_with(&format!(" (boot {boot})")))
}

/// Whether a process with this id is known to be gone (never true where that cannot be
/// told, nor for this process).
pub fn is_gone(pid: u32) -> bool {
    if pid == std::process::id() || pid == 0 || boot_and_namespace().is_none() {
        return false;
    }
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_its_host_is_this_boot() {
        assert!(!is_gone(std::process::id()));
        let me = identity("box");
        if boot_and_namespace().is_some() {
            assert!(is_this_boot(&me));
            assert!(!is_this_boot("box"));
            assert!(!is_this_boot("box (boot 000000000000/1)"));
            // A child that exited is gone.
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            assert!(is_gone(pid));
        } else {
            assert_eq!(me, "box");
        }
    }
}

//! The open-iscsi commands attach and detach run: each an argument list built here (tested as
//! text), run with a time limit; a failure is one line naming the command and iscsiadm's own
//! last words.

use std::path::PathBuf;
use std::time::Duration;

use super::HostError;

/// Runs `iscsiadm`.
#[derive(Debug, Clone)]
pub struct Iscsiadm {
    /// The program (`iscsiadm`, found on `PATH`).
    pub program: PathBuf,
    /// How long one command may take.
    pub timeout: Duration,
}

impl Default for Iscsiadm {
    fn default() -> Self {
        Iscsiadm {
            program: PathBuf::from("iscsiadm"),
            timeout: Duration::from_secs(60),
        }
    }
}

/// `-m node -o new`: a node record for `target` at `portal`, without discovery (which would
/// record every target the portal lists).
pub fn new_node(target: &str, portal: &str) -> Vec<String> {
    args(&["-m", "node", "-o", "new", "-T", target, "-p", portal])
}

/// `-m node -o update`: sets `name` to `value` in the node record.
pub fn update(target: &str, portal: &str, name: &str, value: &str) -> Vec<String> {
    args(&[
        "-m", "node", "-T", target, "-p", portal, "-o", "update", "-n", name, "-v", value,
    ])
}

/// `-m node --login`.
pub fn login(target: &str, portal: &str) -> Vec<String> {
    args(&["-m", "node", "-T", target, "-p", portal, "--login"])
}

/// `-m node --logout`, every portal of `target`.
pub fn logout(target: &str) -> Vec<String> {
    args(&["-m", "node", "-T", target, "--logout"])
}

/// `-m node -o delete`: forgets the node records of `target`.
pub fn delete(target: &str) -> Vec<String> {
    args(&["-m", "node", "-T", target, "-o", "delete"])
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Iscsiadm {
    /// Runs `iscsiadm ARGS`, returning its standard output.
    pub async fn run(&self, args: &[String]) -> Result<String, HostError> {
        let shown = format!("{} {}", self.program.display(), args.join(" "));
        let child = tokio::process::Command::new(&self.program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(self.timeout, child).await {
            Err(_) => {
                return Err(HostError::Command {
                    command: shown,
                    message: format!("no answer within {:?}", self.timeout),
                })
            }
            Ok(Err(e)) => {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    " (install open-iscsi)"
                } else {
                    ""
                };
                return Err(HostError::Command {
                    command: shown,
                    message: format!("{e}{hint}"),
                });
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            return Err(HostError::Command {
                command: shown,
                message: format!("{} ({})", last.unwrap_or("failed").trim(), output.status),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_target_and_portal() {
        let (t, p) = ("iqn.2026-12.io.overlaybd.attach:ab12", "127.0.0.1:3260");
        assert_eq!(
            new_node(t, p).join(" "),
            format!("-m node -o new -T {t} -p {p}")
        );
        assert_eq!(
            update(t, p, "node.session.timeo.replacement_timeout", "600").join(" "),
            format!(
                "-m node -T {t} -p {p} -o update -n node.session.timeo.replacement_timeout -v 600"
            )
        );
        assert_eq!(
            login(t, p).join(" "),
            format!("-m node -T {t} -p {p} --login")
        );
        assert_eq!(logout(t).join(" "), format!("-m node -T {t} --logout"));
        assert_eq!(delete(t).join(" "), format!("-m node -T {t} -o delete"));
    }

    #[tokio::test]
    async fn a_failure_is_one_line_with_the_programs_last_words() {
        let sh = Iscsiadm {
            program: PathBuf::from("sh"),
            timeout: Duration::from_secs(5),
        };
        let script = |text: &str| ["-c".to_string(), text.to_string()];
        assert_eq!(sh.run(&script("echo ok")).await.unwrap(), "ok\n");
        let failing = script("echo first >&2; echo 'iscsiadm: No session found.' >&2; exit 21");
        let e = sh.run(&failing).await.unwrap_err().to_string();
        assert!(
            e.contains("iscsiadm: No session found. (exit status: 21)"),
            "{e}"
        );
        let slow = Iscsiadm {
            program: PathBuf::from("sleep"),
            timeout: Duration::from_millis(100),
        };
        let e = slow.run(&["5".to_string()]).await.unwrap_err().to_string();
        assert!(e.contains("no answer within 100ms"), "{e}");
        let missing = Iscsiadm {
            program: PathBuf::from("/nonexistent/iscsiadm"),
            ..Iscsiadm::default()
        };
        let e = missing.run(&[]).await.unwrap_err().to_string();
        assert!(e.contains("install open-iscsi"), "{e}");
    }
}

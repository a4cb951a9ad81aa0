//! Docker credential helpers: the programs `docker-credential-<name>` that Docker's
//! `config.json` names in `credHelpers` (per registry) or `credsStore` (for all registries).
//!
//! The protocol, as Docker uses it for pulls: the program is run with the single argument
//! `get`, the server URL (the registry as `config.json` keys it) is written to its standard
//! input, and it answers on its standard output with
//! `{"ServerURL": "…", "Username": "…", "Secret": "…"}` and exit status 0. A `Username` of
//! `<token>` means the secret is an identity token (an OAuth2 refresh token). A helper without
//! credentials for that server exits non-zero saying "credentials not found"; this module
//! treats that as anonymous access. Any other failure is an error naming the helper.
//!
//! A helper runs in its own process group with a timeout and bounded output: one that hangs,
//! or writes without end, is killed with everything it started, and the lookup fails with a
//! one-line reason. Nothing is cached here: every lookup runs the helper again, so rotated
//! secrets are picked up.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::credentials::RegistryCredentials;

/// The largest output (standard output or error) read from a helper. Answers are a few
/// hundred bytes; a helper writing more is broken.
const MAX_OUTPUT: usize = 64 * 1024;

/// The program name of helper `name`.
pub(super) fn program(name: &str) -> String {
    format!("docker-credential-{name}")
}

/// Whether `name` can name a helper program: letters, digits, `.`, `-`, `_` (so it cannot
/// climb out of the searched folders).
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Reads a helper's answer to `get`. Empty `Username` and `Secret` mean no credentials.
pub(super) fn parse_answer(stdout: &[u8]) -> Result<Option<RegistryCredentials>, String> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: Answer =
        serde_json::from_slice(stdout).map_err(|e| format!("malformed answer ({e})"))?;
    if a.username.is_empty() && a.secret.is_empty() {
        return Ok(None);
    }
    if a.secret.is_empty() {
        return Err(format!("answer for user {:?} without a Secret", a.username));
    }
    Ok(Some(RegistryCredentials {
        username: a.username,
        password: a.secret,
    }))
}

/// Whether a failed helper's output says it simply has no credentials for the server.
pub(super) fn says_not_found(output: &[u8]) -> bool {
    String::from_utf8_lossy(output)
        .to_ascii_lowercase()
        .contains("credentials not found")
}

/// The first line of a failed helper's output, shortened, for an error message.
fn first_line(stdout: &[u8], stderr: &[u8]) -> String {
    let text = [stdout, stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| "no output".into());
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// The helper program `name` in the first of `search_path` holding an executable file of
/// that name. Relative folders (`.` or an empty entry in `$PATH`) are skipped: which program
/// runs must not depend on the daemon's working directory.
pub(super) fn find(name: &str, search_path: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let program = program(name);
    search_path
        .iter()
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(&program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Reads at most `MAX_OUTPUT + 1` bytes; the caller refuses more than `MAX_OUTPUT`.
async fn read_bounded(reader: Option<impl AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(r) = reader {
        r.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out).await?;
    }
    Ok(out)
}

/// Runs `docker-credential-<name> get` for `server_url`, the program found in `search_path`,
/// within `timeout`. `Ok(None)` when the helper has no credentials for the server.
pub(super) async fn get(
    name: &str,
    server_url: &str,
    search_path: &[PathBuf],
    timeout: Duration,
) -> io::Result<Option<RegistryCredentials>> {
    let program = program(name);
    let fail = |kind: io::ErrorKind, what: String| {
        io::Error::new(kind, format!("credential helper {program}: {what}"))
    };
    if !valid_name(name) {
        return Err(fail(
            io::ErrorKind::InvalidInput,
            "invalid helper name in Docker's config.json".into(),
        ));
    }
    let path = find(name, search_path).ok_or_else(|| {
        let dirs: Vec<String> = search_path
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        fail(
            io::ErrorKind::NotFound,
            format!("no such executable in {}", dirs.join(":")),
        )
    })?;
    let started = std::time::Instant::now();
    let result = run(&path, server_url, timeout).await;
    tracing::debug!(helper = %program, server = server_url, elapsed = ?started.elapsed(), ok = result.is_ok(), "credential helper ran");
    match result {
        Err(Run::Io(e)) => Err(fail(
            e.kind(),
            format!("cannot run {}: {e}", path.display()),
        )),
        Err(Run::TimedOut) => Err(fail(
            io::ErrorKind::TimedOut,
            format!("no answer within {} s (killed)", timeout.as_secs_f64()),
        )),
        Err(Run::TooLarge) => Err(fail(
            io::ErrorKind::InvalidData,
            format!("output larger than {MAX_OUTPUT} bytes (killed)"),
        )),
        Ok((status, stdout, stderr)) if !status.success() => {
            if says_not_found(&stdout) || says_not_found(&stderr) {
                return Ok(None);
            }
            Err(fail(
                io::ErrorKind::Other,
                format!("failed ({status}): {}", first_line(&stdout, &stderr)),
            ))
        }
        Ok((_, stdout, _)) => {
            parse_answer(&stdout).map_err(|e| fail(io::ErrorKind::InvalidData, e))
        }
    }
}

/// How running a helper failed, before its answer is looked at.
enum Run {
    Io(io::Error),
    TimedOut,
    TooLarge,
}

/// Runs `path get` with `input` on standard input; its exit status and outputs.
async fn run(
    path: &Path,
    input: &str,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), Run> {
    let mut child = tokio::process::Command::new(path)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a kill also ends what it started (a shell script's commands).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(Run::Io)?;
    let pid = child.id();
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let exchange = async {
        let write = async move {
            if let Some(mut stdin) = stdin {
                // A helper may exit without reading its input; what it says then decides.
                let _ = stdin.write_all(input.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        let ((), out, err) = tokio::join!(write, read_bounded(stdout), read_bounded(stderr));
        let (out, err) = (out.map_err(Run::Io)?, err.map_err(Run::Io)?);
        if out.len() > MAX_OUTPUT || err.len() > MAX_OUTPUT {
            return Err(Run::TooLarge);
        }
        let status = child.wait().await.map_err(Run::Io)?;
        Ok((status, out, err))
    };
    let result = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(Run::TimedOut));
    if result.is_err() {
        if let Some(pid) = pid {
            crate::sys::kill_process_group(pid);
        }
        let _ = child.start_kill();
        // Reap it; after SIGKILL this is immediate.
        let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed() {
        let c = parse_answer(br#"{"ServerURL":"gcr.io","Username":"_json_key","Secret":"s"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("_json_key", "s")
        );
        assert_eq!(c.identity_token(), None);
        let t = parse_answer(br#"{"ServerURL":"r","Username":"<token>","Secret":"refresh"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(t.identity_token(), Some("refresh"));
        assert_eq!(
            parse_answer(br#"{"ServerURL":"r","Username":"","Secret":""}"#),
            Ok(None)
        );
        assert_eq!(parse_answer(b"{}"), Ok(None));
        let e = parse_answer(br#"{"Username":"u"}"#).unwrap_err();
        assert!(e.contains("without a Secret"), "{e}");
        let e = parse_answer(b"username=u").unwrap_err();
        assert!(e.starts_with("malformed answer"), "{e}");
        assert!(parse_answer(br#"{"Username": 5, "Secret": "s"}"#).is_err());
    }

    #[test]
    fn names_and_not_found_texts() {
        assert!(valid_name("ecr-login") && valid_name("desktop.exe") && valid_name("a_b"));
        for bad in ["", ".", "..", "../x", "a/b", "a b", "x;rm"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(says_not_found(
            b"credentials not found in native keychain\n"
        ));
        assert!(says_not_found(b"Error: Credentials not found"));
        assert!(!says_not_found(
            b"error getting credentials - err: exit status 1"
        ));
        assert_eq!(first_line(b"", b"  boom\nmore\n"), "boom");
        assert_eq!(first_line(b"", b""), "no output");
        assert_eq!(first_line(&[b'x'; 300], b"").chars().count(), 201);
    }

    /// Writes an executable `docker-credential-<name>` script into `dir`.
    fn script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(program(name));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn helpers_are_run_with_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let path = vec![PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        let t = Duration::from_secs(5);
        // Answers with the server URL it read as the user name, proving what it got.
        script(
            dir.path(),
            "echo",
            r#"[ "$1" = get ] || exit 3; read -r s; printf '{"ServerURL":"%s","Username":"%s","Secret":"pw"}' "$s" "$s""#,
        );
        let c = get("echo", "https://index.docker.io/v1/", &path, t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "https://index.docker.io/v1/");

        script(
            dir.path(),
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(get("none", "r", &path, t).await.unwrap(), None);

        script(dir.path(), "broken", "echo 'keychain locked' >&2; exit 2");
        let e = get("broken", "r", &path, t).await.unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-broken")
                && e.contains("keychain locked")
                && e.contains("exit status: 2"),
            "{e}"
        );

        script(dir.path(), "garbage", "echo 'not json'");
        let e = get("garbage", "r", &path, t).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string()
                .contains("docker-credential-garbage: malformed answer"),
            "{e}"
        );

        let e = get("missing", "r", &path, t).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("docker-credential-missing"), "{e}");
        // A non-executable file of that name is not a helper.
        std::fs::write(dir.path().join(program("plain")), "").unwrap();
        assert!(get("plain", "r", &path, t).await.is_err());
        // A relative folder is not searched, even when it holds the helper.
        let cwd = std::env::current_dir().unwrap();
        let relative = dir.path().strip_prefix(&cwd).map(Path::to_path_buf);
        let relative = relative.unwrap_or_else(|_| {
            // `../..` up to the root, then the absolute path without its leading `/`.
            let ups = cwd.components().count() - 1;
            let mut p: PathBuf = std::iter::repeat_n("..", ups).collect();
            p.push(dir.path().strip_prefix("/").unwrap());
            p
        });
        assert!(relative.is_relative() && relative.join(program("echo")).exists());
        assert!(get("echo", "r", &[relative], t).await.is_err());
        let e = get("../echo", "r", &path, t).await.unwrap_err();
        assert!(e.to_string().contains("invalid helper name"), "{e}");
    }

    #[tokio::test]
    async fn hung_or_flooding_helpers_are_killed_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = vec![dir.path().to_path_buf()];
        let marker = dir.path().join("survived");
        // The shell waits on a child; both must die (the child would write the marker).
        script(
            dir.path(),
            "hang",
            &format!("(sleep 2; touch {}) & wait", marker.display()),
        );
        let started = std::time::Instant::now();
        let e = get("hang", "r", &path, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            e.to_string()
                .contains("docker-credential-hang: no answer within 0.3 s"),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        script(
            dir.path(),
            "flood",
            "yes '{\"Username\":\"u\",\"Secret\":\"s\"}'",
        );
        let e = get("flood", "r", &path, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("output larger than 65536 bytes"),
            "{e}"
        );

        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert!(!marker.exists(), "the hung helper's child was not killed");
    }
}

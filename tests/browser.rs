//! The web client in a real browser: headless Chromium (Debian's
//! `chromium`), driven by Playwright from `web/tests/e2e.mjs`, against the
//! server binary on port 0 with a real SQLite file. Each test is one
//! scenario; this side owns the server and kills and restarts it when the
//! script asks (`@@kill`, `@@start` on its stdout, answered on its stdin).
//!
//! Needs `node`, `web/node_modules` (`npm ci` in `web/`) and
//! `/usr/bin/chromium`; `.ci/run` installs them. Without them these tests
//! fail and say what is missing: a browser test that passes without a
//! browser would prove nothing.

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::log_field;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The scenarios share two cores: one browser at a time.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn two_browser_users_talk_in_a_room_and_see_each_line_once() {
    run("room");
}

#[test]
fn a_browser_user_and_a_netcat_user_exchange_direct_messages() {
    run("dm");
}

#[test]
fn a_dm_sent_while_away_shows_at_the_next_login() {
    run("away");
}

#[test]
fn the_page_rides_out_a_server_restart_and_loses_nothing() {
    run("restart");
}

#[test]
fn an_operator_kick_sends_the_page_back_to_log_in_with_the_notice() {
    run_prepared("e2e.mjs", "kicked", &[], &[], |data_dir| {
        common::make_operator(data_dir, common::OPERATOR)
    });
}

#[test]
fn history_scrolls_back_a_page_at_a_time() {
    run("history");
}

#[test]
fn over_tls_the_page_is_https_and_its_calls_use_http2() {
    let certs = tempfile::tempdir().expect("temp dir");
    let made = meshtalk::tls::make_certificates(certs.path(), &[]).expect("certificates");
    let tls = [
        "--tls-cert".into(),
        made.cert.into_os_string(),
        "--tls-key".into(),
        made.key.into_os_string(),
    ];
    run_script("e2e.mjs", "tls", &[], &tls);
}

/// Writes `docs/web-*.png` from a real session (not a check: run it by hand
/// when the page changes, and look at the pictures).
#[test]
#[ignore = "writes docs/; run by hand: cargo test --test browser -- --ignored screenshots"]
fn screenshots() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    run_script(
        "docs.mjs",
        "shots",
        &[("MESHTALK_DOCS_DIR", docs.as_os_str())],
        &[],
    );
}

/// Prints the figures of docs/performance.md's "Web client" section.
#[test]
#[ignore = "a measurement: cargo test --release --test browser -- --ignored --nocapture measure"]
fn measure() {
    run_script("docs.mjs", "measure", &[], &[]);
}

/// The server binary on ports chosen once (port 0 the first time), so a
/// restart comes back where the page expects it.
struct WebServer {
    child: Child,
    data_dir: PathBuf,
    /// Flags besides the addresses and the data dir (TLS).
    flags: Vec<OsString>,
    /// `--grpc-addr` and the rest, as first bound.
    addrs: Vec<(&'static str, String)>,
}

impl WebServer {
    fn start(data_dir: &Path, flags: &[OsString]) -> WebServer {
        let any = "127.0.0.1:0".to_owned();
        let addrs = ["grpc", "talk", "wire", "http"].map(|door| (door, any.clone()));
        let (child, serving) = spawn(data_dir, &addrs, flags);
        let bound = addrs.map(|(door, _)| {
            let addr = log_field(&serving, door)
                .unwrap_or_else(|| panic!("no {door} address in {serving}"));
            (door, addr.to_owned())
        });
        WebServer {
            child,
            data_dir: data_dir.to_owned(),
            flags: flags.to_vec(),
            addrs: bound.to_vec(),
        }
    }

    fn addr(&self, door: &str) -> &str {
        let (_, addr) = self.addrs.iter().find(|(d, _)| *d == door).expect("a door");
        addr
    }

    /// SIGKILL: no goodbye on any stream, as in a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server again, on the same ports and data dir.
    fn restart(&mut self) {
        let (child, _) = spawn(&self.data_dir, &self.addrs, &self.flags);
        self.child = child;
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `meshtalk serve` and waits for the line saying where it serves.
fn spawn(data_dir: &Path, addrs: &[(&str, String)], flags: &[OsString]) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshtalk"));
    command.args(["serve", "--log-format", "json", "--node-name", "web-test"]);
    for (door, addr) in addrs {
        command.arg(format!("--{door}-addr")).arg(addr);
    }
    command.arg("--data-dir").arg(data_dir).args(flags);
    let mut child = common::spawn_logging(&mut command);
    let (serving, lines) = common::serving_line(&mut child, "http");
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (child, serving)
}

/// What the browser tests need on the machine, or a panic naming what is missing.
fn web_dir() -> PathBuf {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser tests need Debian's chromium package \
         (`apt-get install chromium`; .ci/run installs it)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|out| out.status.success()),
        "node is missing: the browser tests run Playwright under Node.js 20 or newer"
    );
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules is missing: run `npm ci` in web/ (.ci/run does)",
        web.display()
    );
    web
}

/// Runs one scenario of `web/tests/e2e.mjs` against a fresh server.
fn run(scenario: &str) {
    run_script("e2e.mjs", scenario, &[], &[]);
}

/// Runs one scenario of a script in `web/tests/` against a fresh server
/// started with `flags`; fails with the script's output if it does.
fn run_script(script: &str, scenario: &str, env: &[(&str, &std::ffi::OsStr)], flags: &[OsString]) {
    run_prepared(script, scenario, env, flags, |_| {});
}

/// As [`run_script`], with `prepare` run on the server's data dir before it
/// starts (to make an operator, say).
fn run_prepared(
    script: &str,
    scenario: &str,
    env: &[(&str, &std::ffi::OsStr)],
    flags: &[OsString],
    prepare: impl FnOnce(&Path),
) {
    let web = web_dir();
    let _turn = ONE_BROWSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    prepare(&data_dir);
    let mut server = WebServer::start(&data_dir, flags);
    let scheme = if flags.is_empty() { "http" } else { "https" };
    let mut script = Command::new("node")
        .arg(Path::new("tests").join(script))
        .arg(scenario)
        .current_dir(&web)
        .envs(env.iter().copied())
        .env(
            "MESHTALK_WEB_URL",
            format!("{scheme}://{}", server.addr("http")),
        )
        .env("MESHTALK_TALK_ADDR", server.addr("talk"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let mut to_script = script.stdin.take().expect("stdin");
    let stdout = script.stdout.take().expect("stdout");
    let stderr = script.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let mut output = Vec::new();
    let mut passed = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        match line.as_str() {
            "@@kill" => server.kill(),
            "@@start" => server.restart(),
            _ => {
                passed |= line == format!("@@passed {scenario}");
                output.push(line);
                continue;
            }
        }
        let action = line.trim_start_matches("@@");
        writeln!(to_script, "{action} done").expect("answer the script");
        output.push(line);
    }
    let status = script.wait().expect("node exits");
    let errors = errors.join().unwrap_or_default();
    // Shown with --nocapture: the figures of `measure`, among others.
    println!("{}", output.join("\n"));
    assert!(
        status.success() && passed,
        "the {scenario} scenario failed ({status}):\n{}\n{errors}",
        output.join("\n"),
    );
}

//! The `steer` binary's commands and exit codes.

use std::process::{Command, Output};

fn steer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(args)
        .output()
        .unwrap()
}

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const GOOD: &str = r#"
[listen]
http = "127.0.0.1:0"

[proxy]
trusted_proxies = ["10.0.0.0/8"]

[upstreams.blue]
endpoints = ["127.0.0.1:9001"]
protocol = "h2c"

[upstreams.green]
endpoints = ["127.0.0.1:9002"]

[[routes]]
name = "office"
client_ips = ["192.168.0.0/16"]
upstream = "green"

[[routes]]
name = "grpc"
hosts = ["*.example.com"]
header_regex = { "content-type" = "^application/grpc" }
upstream = "blue"
fallback = ["green"]

[[routes]]
name = "split"
path_prefix = "/ui/"
split = { blue = 3, green = 1 }
"#;

#[test]
fn the_top_level_routes_toml_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml");
    steer::config::load(std::path::Path::new(path)).unwrap();
    let out = steer(&["check", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_valid_prints_a_summary_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, GOOD);
    let out = steer(&["check", &path]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok: 3 routes, 2 upstreams, 2 endpoints"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
}

#[test]
fn check_invalid_prints_every_error_with_position_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = GOOD
        .replace(
            "upstream = \"green\"\n\n[[routes]]\nname = \"grpc\"",
            "upstream = \"teal\"\n\n[[routes]]\nname = \"grpc\"",
        )
        .replace("protocol = \"h2c\"", "protocol = \"h3\"");
    let path = write(&dir, &bad);
    let out = steer(&["check", &path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("{path}:10:12: `protocol` must be")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{path}:18:12: unknown upstream `teal`")),
        "{err}"
    );
}

#[test]
fn route_explains_the_match_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, GOOD);
    let out = steer(&[
        "route",
        &path,
        "POST",
        "http://auth.example.com/zitadel.admin.v1.AdminService/Healthz",
        "-H",
        "content-type: application/grpc",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("route \"office\": no (client IP not in `client_ips`)"),
        "{text}"
    );
    assert!(
        text.contains("matched route \"grpc\" (#2 in file order)"),
        "{text}"
    );
    assert!(text.contains("host in [*.example.com]"), "{text}");
    assert!(
        text.contains("upstream: blue (h2c, endpoints 127.0.0.1:9001)"),
        "{text}"
    );
    assert!(text.contains("fallbacks: green"), "{text}");
}

#[test]
fn route_shows_split_and_client_ip_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, GOOD);
    let out = steer(&["route", &path, "GET", "/ui/login", "-H", "Host: a.io"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("matched route \"split\""), "{text}");
    assert!(text.contains("3 (75%) -> blue"), "{text}");
    let out = steer(&[
        "route",
        &path,
        "GET",
        "/",
        "--client-ip",
        "10.0.0.1",
        "-H",
        "X-Forwarded-For: 192.168.1.7",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("client_ip=192.168.1.7"), "{text}");
    assert!(text.contains("matched route \"office\""), "{text}");
}

#[test]
fn route_matches_the_normal_form_of_the_path_as_the_proxy_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, GOOD);
    let out = steer(&["route", &path, "GET", "http://other.io/x/../%75i/login"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("path=/ui/login"), "{text}");
    assert!(text.contains("matched route \"split\""), "{text}");
    // What the proxy answers with 400 is an error here (exit 1).
    for (url, why) in [
        ("http://other.io/%zz", "malformed percent-encoding"),
        ("*", "for OPTIONS only"),
    ] {
        let out = steer(&["route", &path, "GET", url]);
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(why), "{text}");
    }
}

#[test]
fn check_warns_of_route_paths_that_normal_matching_never_meets() {
    let dir = tempfile::tempdir().unwrap();
    let routes = GOOD.replace(
        "path_prefix = \"/ui/\"",
        "path_prefix = \"/ui%2Fv2/./login\"\nstrip_prefix = \"/%75i\"",
    );
    let path = write(&dir, &routes);
    let out = steer(&["check", &path]);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("path `/ui%2Fv2/./login` is not in normal form")
            && text.contains("write `/ui/v2/login`"),
        "{text}"
    );
    assert!(
        text.contains("strip_prefix `/%75i` is not in normal form"),
        "{text}"
    );
    // A request with a malformed percent-encoding gets 400: never routed.
    let malformed = GOOD.replace("path_prefix = \"/ui/\"", "path_prefix = \"/ui%zz/\"");
    let out = steer(&["check", &write(&dir, &malformed)]);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("path `/ui%zz/` has a malformed percent-encoding"),
        "{text}"
    );
    // Matching the raw path, they are what they say.
    let raw = routes.replace("[proxy]\n", "[proxy]\nnormalize_path = false\n");
    let path = write(&dir, &raw);
    let out = steer(&["check", &path]);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("normal form"), "{text}");
}

#[test]
fn route_without_a_match_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, GOOD);
    let out = steer(&["route", &path, "GET", "http://other.io/x"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no route matches"), "{text}");
}

#[test]
fn run_with_an_invalid_config_exits_1_and_a_taken_port_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[listen]\n");
    let out = steer(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes.toml:"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = write(&dir, &GOOD.replace("127.0.0.1:0", &addr.to_string()));
    let out = steer(&["--log-format", "json", "run", "--config", &path]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One clear line, the cause once.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].starts_with(&format!("steer: cannot listen on {addr} (http): ")),
        "{stderr}"
    );
    assert_eq!(
        said[0].matches("Address already in use").count(),
        1,
        "{stderr}"
    );
}

fn steer_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steer"));
    cmd.args(args).current_dir(dir).env_remove("STEER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn check_without_a_file_checks_what_run_would_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), GOOD).unwrap();
    std::fs::write(dir.path().join("other.toml"), "[listen]\n").unwrap();
    let summary = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();
    // ./routes.toml.
    let out = steer_in(dir.path(), &["check"], &[]);
    assert!(summary(&out).starts_with("routes.toml: ok"), "{out:?}");
    // STEER_CONFIG, then --config / -c before or after the command.
    let out = steer_in(dir.path(), &["check"], &[("STEER_CONFIG", "other.toml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("other.toml:"));
    for args in [
        &["--config", "other.toml", "check"][..],
        &["-c", "other.toml", "check"],
        &["check", "-c", "other.toml"],
    ] {
        let out = steer_in(dir.path(), args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    // A FILE wins over STEER_CONFIG.
    let out = steer_in(
        dir.path(),
        &["check", "routes.toml"],
        &[("STEER_CONFIG", "other.toml")],
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn each_command_lists_only_its_own_flags_and_describes_every_argument() {
    let help = |cmd: &str| {
        let out = steer(&[cmd, "--help"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (cmd, absent) in [
        ("check", &["--upgrade", "--workers"][..]),
        ("route", &["--upgrade", "--workers", "--config"]),
        ("demo", &["--upgrade", "--config"]),
        ("demo-upstream", &["--upgrade", "--config", "--workers"]),
    ] {
        let text = help(cmd);
        for flag in absent {
            assert!(
                !text.contains(flag),
                "`steer {cmd} --help` lists {flag}:\n{text}"
            );
        }
        // Every argument line has a description after its name.
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with('<') || l.trim_start().starts_with('['))
        {
            assert!(line.split_whitespace().count() > 1, "{cmd}: {line}");
        }
    }
    assert!(help("run").contains("--upgrade"));
}

#[test]
fn zero_workers_is_an_error() {
    // In an empty folder: were the check gone, no routes.toml to serve.
    let dir = tempfile::tempdir().unwrap();
    let out = steer_in(dir.path(), &["run", "--workers", "0"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workers"));
    let out = steer_in(dir.path(), &["run"], &[("STEER_WORKERS", "0")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("STEER_WORKERS"));
}

use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
[listen]
http = "127.0.0.1:8080"

[upstreams.blue]
endpoints = ["127.0.0.1:9001"]

[[routes]]
name = "default"
upstream = "blue"
"#;

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new("routes.toml")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new("routes.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.messages(),
    }
}

#[test]
fn minimal_config_loads_with_defaults() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.listen.http, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(c.proxy.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.upstreams[0].protocol, Protocol::Http1);
    assert_eq!(c.upstreams[0].balance, Balance::RoundRobin);
    assert_eq!(c.upstreams[0].health, Some(HealthSpec::default()));
    assert_eq!(c.routes[0].target, Target::Upstream(0));
}

#[test]
fn the_spec_example_loads() {
    let text = r#"
[listen]
http  = "0.0.0.0:8080"
admin = "127.0.0.1:9901"
upgrade_socket = "/run/steer/upgrade.sock"

[proxy]
trusted_proxies = ["10.0.0.0/8"]
connect_timeout = "2s"
request_timeout = "60s"
idle_timeout    = "90s"
dns_refresh     = "5s"
shutdown_delay  = "5s"
drain_timeout   = "30s"

[health]
path = "/debug/ready"
interval = "2s"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2

[upstreams.eu-blue]
endpoints = ["10.0.1.10:8080", "10.0.1.11:8080"]
protocol  = "h2c"
balance   = "round_robin"
health    = { interval = "1s" }

[upstreams.eu-green]
endpoints = ["10.0.2.10:8080"]
protocol  = "h2c"

[upstreams.us-blue]
endpoints = ["zitadel.us.example.internal:8080"]
protocol  = "h2c"
health = false

[[routes]]
name = "grpc-canary"
hosts = ["auth.example.com", "*.auth.example.com"]
path_prefix = "/zitadel."
methods = ["POST"]
headers = { "x-canary" = "1" }
header_regex = { "content-type" = "^application/grpc" }
query = { "tenant" = "acme" }
client_ips = ["10.0.0.0/8", "2001:db8::/32"]
upstream = "eu-green"
fallback = ["eu-blue"]

[[routes]]
name = "default"
split = { eu-blue = 90, eu-green = 10 }
fallback = ["us-blue"]
strip_prefix = "/api"
request_headers  = { set = { "x-env" = "prod" }, remove = ["x-debug"] }
response_headers = { set = { "strict-transport-security" = "max-age=31536000" } }
"#;
    let c = parse_ok(text);
    assert_eq!(c.upstreams.len(), 3);
    assert_eq!(
        c.upstreams[0].health.as_ref().unwrap().interval,
        Duration::from_secs(1)
    );
    assert_eq!(c.upstreams[2].health, None);
    assert_eq!(
        c.upstreams[2].endpoints,
        vec![EndpointAddr::Name {
            host: "zitadel.us.example.internal".into(),
            port: 8080
        }]
    );
    assert_eq!(c.routes[1].target, Target::Split(vec![(0, 90), (1, 10)]));
    assert_eq!(c.routes[1].fallback, vec![2]);
    assert_eq!(
        c.routes[0].hosts,
        vec![
            HostPattern::Exact("auth.example.com".into()),
            HostPattern::Wildcard(".auth.example.com".into())
        ]
    );
    assert_eq!(c.routes[1].request_headers.set.len(), 1);
    assert_eq!(c.routes[1].request_headers.remove.len(), 1);
}

#[test]
fn unknown_key_is_reported_with_its_position() {
    let text = MINIMAL.replace("[listen]\n", "[listen]\nhtp = \"x\"\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("routes.toml:3:1: unknown key `htp` in [listen]"),
        "{errs:?}"
    );
}

#[test]
fn a_duration_longer_than_a_year_is_refused() {
    // now + duration would overflow a deadline and panic per request.
    let text = "[listen]\nhttp = \"127.0.0.1:8080\"\n\n[proxy]\nresponse_idle_timeout = \"99999999999h\"\n";
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.contains("5:25") && e.contains("longer than a year")),
        "{errs:?}"
    );
    assert!(super::parse_duration("8760h").is_ok());
}

#[test]
fn every_error_in_the_file_is_reported() {
    let text = r#"
[listen]
http = "127.0.0.1:8080"

[proxy]
connect_timeout = "2 parsecs"
trusted_proxies = ["10.0.0.0/33"]

[upstreams.blue]
endpoints = ["127.0.0.1:9001"]

[[routes]]
name = "a"
upstream = "nope"
path_regex = "("

[[routes]]
name = "a"
upstream = "blue"
split = { blue = 1 }

[[routes]]
name = "c"

[[routes]]
name = "d"
split = { blue = 0 }
fallback = ["gone"]
"#;
    let errs = errors(text);
    let expect = [
        ("6:19", "connect_timeout"),
        ("7:20", "is not a CIDR"),
        ("14:12", "unknown upstream `nope`"),
        ("15:14", "not a valid regex"),
        ("18:8", "duplicate route name `a`"),
        ("20:9", "exactly one of `upstream` or `split`"),
        ("22:1", "needs `upstream` or `split`"),
        ("27:9", "add up to zero"),
        ("28:13", "unknown upstream `gone`"),
    ];
    for (pos, text) in expect {
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("routes.toml:{pos}: ")) && e.contains(text)),
            "missing {pos} {text} in:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), expect.len(), "{}", errs.join("\n"));
}

#[test]
fn no_routes_is_an_error() {
    let text = "[listen]\nhttp = \"127.0.0.1:1\"\n[upstreams.a]\nendpoints = [\"127.0.0.1:2\"]\n";
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.contains("at least one [[routes]]")),
        "{errs:?}"
    );
}

#[test]
fn no_upstreams_is_an_error() {
    let text = "[listen]\nhttp = \"127.0.0.1:1\"\n[[routes]]\nname = \"a\"\nupstream = \"x\"\n";
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.contains("at least one [upstreams.NAME]")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("unknown upstream `x`")),
        "{errs:?}"
    );
}

#[test]
fn listen_needs_http_or_https() {
    let text = MINIMAL.replace("http = \"127.0.0.1:8080\"", "admin = \"127.0.0.1:9901\"");
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("at least one of `http` or `https`")),
        "{errs:?}"
    );
}

#[test]
fn syntax_error_has_a_position() {
    let errs = errors("[listen\nhttp = 1");
    assert!(errs[0].starts_with("routes.toml:1:"), "{errs:?}");
}

#[test]
fn wrong_type_names_what_was_expected() {
    let text = MINIMAL.replace("endpoints = [\"127.0.0.1:9001\"]", "endpoints = [9001]");
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("must be a string, found integer")),
        "{errs:?}"
    );
}

#[test]
fn bad_endpoint_address_is_rejected() {
    for bad in ["127.0.0.1", "host:", "host:99999", ":80", "bad host:80"] {
        let text = MINIMAL.replace("127.0.0.1:9001", bad);
        let errs = errors(&text);
        assert!(
            errs.iter()
                .any(|e| e.contains("must be IP:PORT or HOST:PORT")),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("5 weeks").is_err());
}

#[test]
fn tls_options_need_https_protocol() {
    let text = MINIMAL.replace(
        "endpoints = [\"127.0.0.1:9001\"]",
        "endpoints = [\"127.0.0.1:9001\"]\ntls_server_name = \"x\"",
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("applies only to protocol = \"https\"")),
        "{errs:?}"
    );
}

#[test]
fn https_listener_needs_a_certificate() {
    let text = MINIMAL.replace("http = \"127.0.0.1:8080\"", "https = \"127.0.0.1:8443\"");
    let errs = errors(&text);
    assert!(
        errs.iter().any(|e| e.contains("[[tls.certificates]]")),
        "{errs:?}"
    );
}

#[test]
fn missing_certificate_file_is_reported_at_its_value() {
    let text =
        format!("{MINIMAL}\n[[tls.certificates]]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n");
    let errs = errors(&text);
    assert_eq!(
        errs.iter().filter(|e| e.contains("does not exist")).count(),
        2,
        "{errs:?}"
    );
}

#[test]
fn content_hash_is_stable_and_sensitive() {
    assert_eq!(content_hash(b"abc"), content_hash(b"abc"));
    assert_ne!(content_hash(b"abc"), content_hash(b"abd"));
    assert_eq!(content_hash(b"").len(), 16);
}

#[test]
fn host_patterns_are_lowercased_and_validated() {
    let text = MINIMAL.replace(
        "name = \"default\"",
        "name = \"default\"\nhosts = [\"Auth.Example.COM\", \"*.x.io\"]",
    );
    let c = parse_ok(&text);
    assert_eq!(
        c.routes[0].hosts,
        vec![
            HostPattern::Exact("auth.example.com".into()),
            HostPattern::Wildcard(".x.io".into())
        ]
    );
    for bad in ["a.*.com", "host:8080", "*", ""] {
        let text = MINIMAL.replace(
            "name = \"default\"",
            &format!("name = \"default\"\nhosts = [\"{bad}\"]"),
        );
        assert!(!errors(&text).is_empty(), "{bad} should be rejected");
    }
}

#[test]
fn reload_gate_settings_parse() {
    let c = parse_ok(&format!(
        "[reload]\ngate_timeout = \"30s\"\non_gate_timeout = \"apply\"\n{MINIMAL}"
    ));
    assert_eq!(c.reload.gate_timeout, Duration::from_secs(30));
    assert_eq!(c.reload.on_gate_timeout, GateTimeout::Apply);
    let errs = errors(&format!("[reload]\non_gate_timeout = \"maybe\"\n{MINIMAL}"));
    assert!(
        errs[0].contains("must be \"keep\" or \"apply\""),
        "{errs:?}"
    );
}

#[test]
fn ramp_needs_a_split() {
    let errs =
        errors(&MINIMAL.replace("upstream = \"blue\"", "upstream = \"blue\"\nramp = \"1m\""));
    assert!(
        errs.iter()
            .any(|e| e.contains("`ramp` applies only to a route with `split`")),
        "{errs:?}"
    );
    let c =
        parse_ok(&MINIMAL.replace("upstream = \"blue\"", "split = { blue = 1 }\nramp = \"1m\""));
    assert_eq!(c.routes[0].ramp, Some(Duration::from_secs(60)));
}

#[test]
fn grpc_health_needs_http2() {
    let errs = errors(&MINIMAL.replace(
        "endpoints = [\"127.0.0.1:9001\"]",
        "endpoints = [\"127.0.0.1:9001\"]\nhealth = { grpc_service = \"\" }",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("need protocol \"h2c\" or \"https\"")),
        "{errs:?}"
    );
}

#[test]
fn warmups_parse_and_validate() {
    let c = parse_ok(&MINIMAL.replace(
        "endpoints = [\"127.0.0.1:9001\"]",
        "endpoints = [\"127.0.0.1:9001\"]\nhealth = { warmup = [{ path = \"/.well-known/openid-configuration\", host = \"auth.example.com\", expect_body = \"issuer\" }] }",
    ));
    let w = &c.upstreams[0].health.as_ref().unwrap().warmup[0];
    assert_eq!(w.host.as_deref(), Some("auth.example.com"));
    assert_eq!(w.expect_body.as_deref(), Some("issuer"));
    let errs = errors(&MINIMAL.replace(
        "endpoints = [\"127.0.0.1:9001\"]",
        "endpoints = [\"127.0.0.1:9001\"]\nhealth = { warmup = [{ path = \"nope\" }] }",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("warm-up `path` must be a path")),
        "{errs:?}"
    );
}

#[test]
fn a_route_with_a_bad_target_still_reports_its_other_errors() {
    let errs = errors(&MINIMAL.replace(
        "upstream = \"blue\"",
        "upstream = \"nope\"\nstrip_prefix = \"api\"\nmax_body = \"lots\"",
    ));
    assert!(
        errs.iter().any(|e| e.contains("unknown upstream `nope`")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("`strip_prefix` must start with `/`")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("`max_body` must be a positive size")),
        "{errs:?}"
    );
}

#[test]
fn an_unquoted_address_gets_a_hint_to_quote_it() {
    let text = "[listen]\nhttp = 127.0.0.1:8080\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("strings need quotes: write \"127.0.0.1:8080\""),
        "{errs:?}"
    );
}

#[test]
fn close_misspellings_of_keys_and_upstreams_get_a_did_you_mean() {
    let text = "[listen]\nhttp = \"127.0.0.1:8080\"\n[proxy]\nconect_timeout = \"2s\"\n\
                [upstreams.blue]\nendpoints = [\"127.0.0.1:9001\"]\n\
                [[routes]]\nname = \"r\"\nupstream = \"bleu\"\n[[routes]]\nname = \"s\"\nupstream = \"purple\"\n";
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.ends_with("did you mean `connect_timeout`?")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.ends_with("unknown upstream `bleu`; did you mean `blue`?")),
        "{errs:?}"
    );
    // Nothing close: no guess.
    assert!(
        errs.iter()
            .any(|e| e.ends_with("unknown upstream `purple`")),
        "{errs:?}"
    );
}

/// docs/configuration.md is the reference users read: every key the
/// parser knows, in its table's section, and the default it states for
/// each key with a default, must match the code.
mod reference {
    use std::time::Duration;

    use super::super::parse::{INLINE, SECTIONS};
    use super::super::{GateTimeout, HealthSpec, LogSettings, ProxySettings, ReloadSettings};

    const DOC: &str = include_str!("../../docs/configuration.md");

    /// The lines of the section whose heading starts with `heading`.
    fn section(heading: &str) -> Vec<&'static str> {
        let mut lines = DOC.lines().skip_while(|l| !l.starts_with(heading));
        let first = lines.next();
        assert!(
            first.is_some(),
            "docs/configuration.md has no section `{heading}`"
        );
        lines
            .take_while(|l| !l.starts_with("### ") && !l.starts_with("## "))
            .collect()
    }

    /// The table row of `key` in `heading`'s section.
    fn row(heading: &str, key: &str) -> &'static str {
        section(heading)
            .into_iter()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md, {heading}: no row for `{key}`"))
    }

    /// A duration as the reference writes it: `"500ms"`, `"90s"`, `"1h"`.
    fn duration(d: Duration) -> String {
        let ms = d.as_millis();
        let text = if !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else if d.as_secs().is_multiple_of(3600) {
            format!("{}h", d.as_secs() / 3600)
        } else {
            format!("{}s", d.as_secs())
        };
        format!("\"{text}\"")
    }

    fn states_default(heading: &str, key: &str, default: &str) {
        let row = row(heading, key);
        let column = row.split(" | ").nth(2).unwrap_or("");
        assert!(
            column.contains(&format!("`{default}`")),
            "docs/configuration.md, {heading}, `{key}`: the default is `{default}`; the row says: {row}"
        );
    }

    #[test]
    fn every_key_the_parser_knows_is_in_the_reference() {
        for (heading, keys) in SECTIONS {
            for key in *keys {
                row(heading, key);
            }
        }
        for (heading, holder, keys) in INLINE {
            let row = row(heading, holder);
            for key in *keys {
                assert!(
                    row.contains(key),
                    "{heading}, `{holder}`: `{key}` is not in: {row}"
                );
            }
        }
    }

    #[test]
    fn every_default_in_the_reference_is_the_codes() {
        // Destructured whole: a new setting does not compile here until its
        // default is checked too.
        let ProxySettings {
            trusted_proxies,
            connect_timeout,
            request_timeout,
            idle_timeout,
            dns_refresh,
            shutdown_delay,
            drain_timeout,
            max_header_bytes,
            max_headers,
            tls_handshake_timeout,
            header_read_timeout,
            max_connections,
            max_connections_per_ip,
            send_timeout,
            max_concurrent_streams,
            upgrades,
            tunnel_idle_timeout,
            response_idle_timeout,
            underscores_in_headers,
            normalize_path,
            client_ip_header,
        } = ProxySettings::default();
        let proxy = "### `[proxy]`";
        assert!(trusted_proxies.is_empty());
        states_default(proxy, "trusted_proxies", "[]");
        for (key, d) in [
            ("connect_timeout", connect_timeout),
            ("request_timeout", request_timeout),
            ("idle_timeout", idle_timeout),
            ("dns_refresh", dns_refresh),
            ("shutdown_delay", shutdown_delay),
            ("drain_timeout", drain_timeout),
            ("tls_handshake_timeout", tls_handshake_timeout),
            ("header_read_timeout", header_read_timeout),
            ("send_timeout", send_timeout),
            ("tunnel_idle_timeout", tunnel_idle_timeout),
            ("response_idle_timeout", response_idle_timeout),
        ] {
            states_default(proxy, key, &duration(d));
        }
        for (key, n) in [
            ("max_header_bytes", max_header_bytes),
            ("max_headers", max_headers),
            ("max_concurrent_streams", max_concurrent_streams as usize),
        ] {
            states_default(proxy, key, &n.to_string());
        }
        // None: 10,000 unless the open-files limit holds fewer.
        assert!(max_connections.is_none());
        let default = crate::server::open_files::DEFAULT_MAX_CONNECTIONS;
        states_default(proxy, "max_connections", &default.to_string());
        assert!(max_connections_per_ip.is_none());
        assert!(row(proxy, "max_connections_per_ip").contains("none"));
        let list: Vec<String> = upgrades.iter().map(|u| format!("\"{u}\"")).collect();
        states_default(proxy, "upgrades", &format!("[{}]", list.join(", ")));
        states_default(
            proxy,
            "underscores_in_headers",
            &underscores_in_headers.to_string(),
        );
        states_default(proxy, "normalize_path", &normalize_path.to_string());
        let header = match client_ip_header {
            super::super::ClientIpHeader::XForwardedFor => "\"x-forwarded-for\"",
            super::super::ClientIpHeader::Forwarded => "\"forwarded\"",
        };
        states_default(proxy, "client_ip_header", header);

        let h = HealthSpec::default();
        let health = "### `[health]`";
        states_default(health, "path", &format!("\"{}\"", h.path));
        states_default(health, "interval", &duration(h.interval));
        states_default(health, "timeout", &duration(h.timeout));
        states_default(
            health,
            "healthy_threshold",
            &h.healthy_threshold.to_string(),
        );
        states_default(
            health,
            "unhealthy_threshold",
            &h.unhealthy_threshold.to_string(),
        );

        let r = ReloadSettings::default();
        states_default("### `[reload]`", "gate_timeout", &duration(r.gate_timeout));
        let keep = match r.on_gate_timeout {
            GateTimeout::Keep => "\"keep\"",
            GateTimeout::Apply => "\"apply\"",
        };
        states_default("### `[reload]`", "on_gate_timeout", keep);
        states_default(
            "### `[log]`",
            "access",
            &LogSettings::default().access.to_string(),
        );
    }
}

#[test]
fn rollback_is_validated_and_needs_a_ramp() {
    let route = |extra: &str| {
        format!(
            "[listen]\nhttp = \"127.0.0.1:8080\"\n[upstreams.blue]\nendpoints = [\"127.0.0.1:1\"]\n\
             [upstreams.green]\nendpoints = [\"127.0.0.1:2\"]\n[[routes]]\nname = \"r\"\n\
             split = {{ blue = 1, green = 1 }}\n{extra}"
        )
    };
    let ok = route(
        "ramp = \"1m\"\nrollback = { max_error_rate = 0.05, min_requests = 20, window = \"10s\" }\n",
    );
    let parsed = parse(&ok, std::path::Path::new("routes.toml"));
    assert!(parsed.is_ok(), "{:?}", parsed.err().map(|e| e.messages()));
    for (extra, says) in [
        (
            "rollback = { max_error_rate = 0.05, min_requests = 20, window = \"10s\" }\n",
            "only to a route with `ramp`",
        ),
        (
            "ramp = \"1m\"\nrollback = { max_error_rate = 1.5, min_requests = 20, window = \"10s\" }\n",
            "between 0 and 1",
        ),
        (
            "ramp = \"1m\"\nrollback = { max_error_rate = 0.05, min_requests = 0, window = \"10s\" }\n",
            "`min_requests` must be between 1",
        ),
        (
            "ramp = \"1m\"\nrollback = { max_error_rate = 0.05, min_requests = 20, window = \"500ms\" }\n",
            "at least 1s",
        ),
    ] {
        let errs = errors(&route(extra));
        assert!(errs.iter().any(|e| e.contains(says)), "{extra}: {errs:?}");
    }
}

#[test]
fn client_auth_is_validated_where_it_is_written() {
    let text = MINIMAL.replace(
        "http = \"127.0.0.1:8080\"",
        "http = \"127.0.0.1:8080\"\nclient_auth = { ca = \"nope.pem\", mode = \"maybe\" }",
    );
    let errs = errors(&text);
    for wanted in [
        "`mode` must be \"require\" or \"request\"; got `maybe`",
        "`ca` file `nope.pem` does not exist",
        "[listen.client_auth] needs an `https` listener",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(wanted)),
            "{wanted}: {errs:?}"
        );
    }
    let errs = errors(&MINIMAL.replace(
        "http = \"127.0.0.1:8080\"",
        "http = \"127.0.0.1:8080\"\nclient_auth = { mode = \"request\" }",
    ));
    assert!(errs.iter().any(|e| e.contains("needs `ca`")), "{errs:?}");
}

#[test]
fn an_upstream_client_certificate_needs_its_key_and_https() {
    let with = |lines: &str| {
        MINIMAL.replace(
            "endpoints = [\"127.0.0.1:9001\"]",
            &format!("endpoints = [\"127.0.0.1:9001\"]\n{lines}"),
        )
    };
    let errs = errors(&with("tls_client_cert = \"c.pem\""));
    assert!(errs.iter().any(|e| e.contains("go together")), "{errs:?}");
    let errs = errors(&with(
        "tls_client_cert = \"c.pem\"\ntls_client_key = \"c.key\"",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("`tls_client_cert` applies only to protocol = \"https\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("does not exist")),
        "{errs:?}"
    );
}

#[test]
fn upgrades_are_protocol_tokens_kept_lower_case() {
    let with = |list: &str| {
        MINIMAL.replacen(
            "[upstreams.blue]",
            &format!("[proxy]\nupgrades = {list}\n\n[upstreams.blue]"),
            1,
        )
    };
    let c = parse_ok(&with(r#"["WebSocket/13", "h2c"]"#));
    assert_eq!(c.proxy.upgrades, ["websocket", "h2c"]);
    let errs = errors(&with(r#"["web socket", "", "/13", "ok"]"#));
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs.iter().all(|e| e.contains("must be protocol names")),
        "{errs:?}"
    );
}

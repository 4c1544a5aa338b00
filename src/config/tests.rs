use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/imgsyncd/daemon.yaml"))
}

const GOOD: &str = "\
journal: /var/lib/imgsyncd/journal.sqlite3
workers: 2
settle: 500ms
vendors:
  erp:
    kind: kingdee
    client_id: \"205022\"
    client_secret: s3cret-client
    app_key: bVZgAZOv1
    app_secret: s3cret-app
    domain: https://tf.jdy.com
watches:
  - path: /srv/drop/products
    vendor: erp
";

#[test]
fn a_good_config_gets_its_defaults() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.workers, 2);
    assert_eq!(config.settle, Duration::from_millis(500));
    assert_eq!(config.rescan, Duration::from_secs(3600));
    assert_eq!(config.give_up_after, Duration::from_secs(86400));
    assert_eq!(config.max_deletes, 100);
    let erp = &config.vendors["erp"];
    assert_eq!(erp.base_url, "https://api.kingdee.com");
    let VendorSettings::Kingdee(k) = &erp.settings else {
        panic!("erp is a kingdee vendor")
    };
    assert_eq!(k.client_secret.expose(), "s3cret-client");
    assert!(!k.save_temp);
    let watch = &config.watches[0];
    assert!(watch.recursive);
    assert_eq!(watch.on_remove, OnRemove::Delete);
    assert!(watch.filter.accepts(Path::new("a/b/Photo.JPG")));
    assert!(!watch.filter.accepts(Path::new(".hidden.jpg")));
    assert!(!watch.filter.accepts(Path::new("upload.jpg.part")));
    assert!(!watch.filter.accepts(Path::new("notes.txt")));
    assert!(!watch.filter.accepts(Path::new(".thumbnails/Photo.jpg")));
    assert!(!watch.filter.accepts(Path::new("a/.cache/b/Photo.jpg")));
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let config = parse(GOOD).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[test]
fn an_unknown_key_names_the_line_and_the_key() {
    let text = GOOD.replace("    domain:", "    clientid: x\n    domain:");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("/etc/imgsyncd/daemon.yaml:11: "), "{err}");
    assert!(err.contains("unknown field `clientid`"), "{err}");
}

#[test]
fn a_missing_environment_variable_is_named() {
    let text = GOOD.replace("s3cret-client", "${IMGSYNCD_TEST_SURELY_UNSET}");
    let err = parse(&text).unwrap_err().to_string();
    assert_eq!(
        err,
        "/etc/imgsyncd/daemon.yaml:8: vendors.erp.client_secret: \
         environment variable IMGSYNCD_TEST_SURELY_UNSET is not set"
    );
}

/// The text inside a secret's `${…}` may be the secret's own (a secret holding `${`): never
/// shown, though the key and its line are.
#[test]
fn a_secret_holding_a_reference_is_refused_without_showing_it() {
    for secret in ["Ab9${xK2pQ7}zz", "${xK2pQ7}zz", "Ab9${xK2pQ7"] {
        let err = parse(&GOOD.replace("s3cret-client", secret))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/imgsyncd/daemon.yaml:8: vendors.erp.client_secret: "),
            "{err}"
        );
        assert!(err.contains("client_secret_file"), "{err}");
        for part in ["xK2pQ7", "Ab9", "zz"] {
            assert!(!err.contains(part), "{secret}: {err}");
        }
    }
}

/// A file that is only a secret, given as the config by mistake (its path is where the
/// config's goes), or a secret where a map goes: the error names the line, not the value.
#[test]
fn a_value_in_the_wrong_place_is_not_quoted() {
    let secret = "f2adcf9b7e31secret";
    for text in [
        secret.to_string(),
        GOOD.replace("vendors:\n", &format!("vendors: {secret}\nunused:\n")),
    ] {
        let err = parse(&text).unwrap_err().to_string();
        assert!(!err.contains("f2adcf"), "{err}");
        assert!(err.contains("string (not shown)"), "{err}");
    }
}

#[test]
fn the_journal_and_the_durations_expand_variables_too() {
    for (from, key) in [("/var/lib/imgsyncd", "journal"), ("500ms", "settle")] {
        let err = parse(&GOOD.replace(from, "${IMGSYNCD_TEST_SURELY_UNSET}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "{key}: environment variable IMGSYNCD_TEST_SURELY_UNSET is not set"
            )),
            "{err}"
        );
    }
}

#[test]
fn a_config_named_relative_to_the_working_folder_gives_absolute_paths() {
    let text = GOOD
        .replace("/var/lib/imgsyncd/journal.sqlite3", "state/journal.sqlite3")
        .replace("/srv/drop/products", "drop");
    let config = Config::parse(&text, Path::new("daemon.yaml")).unwrap();
    let here = std::env::current_dir().unwrap();
    assert_eq!(config.journal, here.join("state/journal.sqlite3"));
    assert_eq!(config.watches[0].path, here.join("drop"));
}

#[test]
fn a_bad_exclude_pattern_is_named_as_exclude() {
    let text = GOOD.replace(
        "    vendor: erp\n",
        "    vendor: erp\n    exclude: [\"{a\"]\n",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "/etc/imgsyncd/daemon.yaml:15: watches[0].exclude: error parsing glob '{a'"
        ),
        "{err}"
    );
}

#[test]
fn a_secret_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("app_secret");
    std::fs::write(&secret, "from-a-file\n").unwrap();
    let text = GOOD.replace(
        "app_secret: s3cret-app",
        &format!("app_secret_file: {}", secret.display()),
    );
    let config = parse(&text).unwrap();
    let VendorSettings::Kingdee(k) = &config.vendors["erp"].settings else {
        panic!("erp is a kingdee vendor")
    };
    assert_eq!(k.app_secret.expose(), "from-a-file");
}

#[test]
fn a_missing_secret_file_is_named() {
    let text = GOOD.replace(
        "app_secret: s3cret-app",
        "app_secret_file: /nonexistent/secret",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with("/etc/imgsyncd/daemon.yaml:10: vendors.erp.app_secret_file: cannot read /nonexistent/secret"),
        "{err}"
    );
}

#[test]
fn a_secret_of_two_lines_is_named_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("app_secret");
    std::fs::write(&secret, "first-half\nsecond-half\n").unwrap();
    let text = GOOD.replace(
        "app_secret: s3cret-app",
        &format!("app_secret_file: {}", secret.display()),
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with("/etc/imgsyncd/daemon.yaml:10: vendors.erp.app_secret_file: ")
            && err.contains("holds a line break"),
        "{err}"
    );
    assert!(!err.contains("half"), "{err}");
    let text = GOOD.replace("app_secret: s3cret-app", "app_secret: \"s3cret\\tapp\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("vendors.erp.app_secret: it holds"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let text = GOOD.replace("app_secret: s3cret-app", "app_secret_file: \"\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("app_secret_file: must not be empty"), "{err}");
}

#[test]
fn a_bad_duration_is_named() {
    let err = parse(&GOOD.replace("500ms", "fast"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/etc/imgsyncd/daemon.yaml:3: settle: `fast` is not a duration"),
        "{err}"
    );
}

#[test]
fn metrics_is_off_unless_set_and_loopback_for_a_bare_port() {
    assert_eq!(parse(GOOD).unwrap().metrics, None);
    let with = |value: &str| parse(&format!("metrics: {value}\n{GOOD}"));
    assert_eq!(
        with("127.0.0.1:9464").unwrap().metrics,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(
        with("9464").unwrap().metrics,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(
        with("localhost:9464").unwrap().metrics,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(
        with("\"[::1]:9464\"").unwrap().metrics,
        Some("[::1]:9464".parse().unwrap())
    );
    assert_eq!(
        with("0.0.0.0:9464").unwrap().metrics,
        Some("0.0.0.0:9464".parse().unwrap()),
        "another address when set so"
    );
}

#[test]
fn a_bad_metrics_address_names_the_line_and_the_key() {
    let text = GOOD.replace(
        "settle: 500ms\n",
        "settle: 500ms\nmetrics: 127.0.0.1:http\n",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "/etc/imgsyncd/daemon.yaml:4: metrics: `127.0.0.1:http` is not an address to listen on"
        ),
        "{err}"
    );
}

#[test]
fn an_unset_credentials_directory_is_named_with_its_line_and_a_hint() {
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
        return; // running under systemd with credentials: nothing to show
    }
    let text = GOOD.replace(
        "app_secret: s3cret-app",
        "app_secret_file: ${CREDENTIALS_DIRECTORY}/kingdee_app_secret",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "/etc/imgsyncd/daemon.yaml:10: vendors.erp.app_secret_file: \
             environment variable CREDENTIALS_DIRECTORY is not set (systemd sets it"
        ),
        "{err}"
    );
}

#[test]
fn the_journals_readers_need_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon.yaml");
    let text = GOOD
        .replace(
            "app_secret: s3cret-app",
            "app_secret_file: ${CREDENTIALS_DIRECTORY}/kingdee_app_secret",
        )
        .replace("s3cret-client", "${IMGSYNCD_TEST_SURELY_UNSET}");
    std::fs::write(&path, &text).unwrap();
    assert!(Config::load(&path).is_err());
    let config = Config::load_without_secrets(&path).unwrap();
    assert_eq!(
        config.journal,
        PathBuf::from("/var/lib/imgsyncd/journal.sqlite3")
    );
    // Everything else is still checked.
    std::fs::write(&path, text.replace("500ms", "fast")).unwrap();
    assert!(Config::load_without_secrets(&path).is_err());
}

/// Under systemd the ids may come from an `EnvironmentFile=` only root reads: an operator's
/// `status` has none of them, and needs none, only the journal and the watches.
#[test]
fn the_journals_readers_need_no_variable_but_in_the_journal_and_the_watches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon.yaml");
    let unset = "${IMGSYNCD_TEST_SURELY_UNSET}";
    let vendors = format!(
        "  wiki:
    kind: feishu
    base_url: {unset}/lark
    app_id: {unset}
    app_secret: {unset}
  forms:
    kind: jiandaoyun
    api_key: {unset}
    app_id: {unset}
    entry_id: {unset}
    create_record:
      image_widget: {unset}
      fields:
        _widget_1432728651403: \"{{filename}} {unset}\"
watches:
"
    );
    let text = GOOD
        .replace("\"205022\"", unset)
        .replace(
            "    client_id:",
            &format!("    base_url: {unset}\n    client_id:"),
        )
        .replace(
            "settle: 500ms",
            &format!("settle: {unset}\nmetrics: {unset}"),
        )
        .replace("watches:\n", &vendors)
        + &format!("  - path: /srv/drop/wiki\n    vendor: wiki\n    poll: {unset}\n");
    std::fs::write(&path, &text).unwrap();
    // `run` and `check` still refuse it, at the first key.
    let err = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:3: settle: environment variable IMGSYNCD_TEST_SURELY_UNSET is not set",
            path.display()
        )
    );
    let config = Config::load_without_secrets(&path).unwrap();
    assert_eq!(
        config.journal,
        PathBuf::from("/var/lib/imgsyncd/journal.sqlite3")
    );
    let watched: Vec<(&Path, &str, VendorKind)> = config
        .watches
        .iter()
        .map(|w| {
            let kind = config.vendors[&w.vendor].settings.kind();
            (w.path.as_path(), w.vendor.as_str(), kind)
        })
        .collect();
    assert_eq!(
        watched,
        [
            (Path::new("/srv/drop/products"), "erp", VendorKind::Kingdee),
            (Path::new("/srv/drop/wiki"), "wiki", VendorKind::Feishu),
        ]
    );
    assert_eq!(config.watches[1].on_remove, OnRemove::Keep);
    // What is left unresolved is kept as written or taken as not given, never made up.
    let erp = &config.vendors["erp"];
    let VendorSettings::Kingdee(k) = &erp.settings else {
        panic!("erp is a kingdee vendor")
    };
    assert_eq!(k.client_id, unset);
    assert_eq!(erp.base_url, unset);
    assert_eq!(config.vendors["wiki"].base_url, format!("{unset}/lark"));
    assert_eq!(feishu(&config).app_id, unset);
    let forms = jiandaoyun(&config);
    assert_eq!(forms.app_id, unset);
    let record = forms.create_record.as_ref().unwrap();
    assert_eq!(record.image_widget, unset);
    assert!(record.fields.is_empty());
    assert_eq!(config.settle, Duration::from_secs(2));
    assert_eq!(config.metrics, None);
    assert_eq!(config.watches[1].poll, None);
}

/// The journal is what the readers read, and a watch's path is what `retry` decides by: a
/// variable unset in either stays an error, naming the file, the line and the key.
#[test]
fn the_journals_readers_need_the_journals_and_the_watches_variables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon.yaml");
    for (from, line, key) in [
        ("/var/lib/imgsyncd", 1, "journal"),
        ("/srv/drop", 13, "watches[0].path"),
    ] {
        std::fs::write(&path, GOOD.replace(from, "${IMGSYNCD_TEST_SURELY_UNSET}")).unwrap();
        let err = Config::load_without_secrets(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:{line}: {key}: environment variable IMGSYNCD_TEST_SURELY_UNSET is not set",
                path.display()
            )
        );
    }
}

#[test]
fn the_example_configs_metrics_line_works_once_uncommented() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/daemon.example.yaml"))
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("# metrics: "))
        .expect("the example shows `metrics`");
    let uncommented = line.trim_start_matches("# ");
    let config = parse(&format!("{uncommented}\n{GOOD}")).unwrap();
    assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn a_missing_required_key_points_at_its_vendor() {
    let err = parse(&GOOD.replace("    app_key: bVZgAZOv1\n", ""))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/etc/imgsyncd/daemon.yaml:5: vendors.erp.app_key: is required"
    );
}

#[test]
fn a_watch_must_name_a_configured_vendor() {
    let err = parse(&GOOD.replace("vendor: erp", "vendor: crm"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/etc/imgsyncd/daemon.yaml:14: watches[0].vendor: no vendor named `crm` (configured: erp)"
    );
}

#[test]
fn overlapping_watches_are_refused() {
    let text = format!("{GOOD}  - path: /srv/drop/products/sub\n    vendor: erp\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains(":15: watches[1].path: /srv/drop/products/sub overlaps"),
        "{err}"
    );
}

#[test]
fn overlapping_watches_are_found_through_dot_dot() {
    let text = format!("{GOOD}  - path: /srv/drop/other/../products/./sub/\n    vendor: erp\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains(":15: watches[1].path: /srv/drop/other/../products/sub overlaps"),
        "{err}"
    );
    // The path is kept as written (less `.` and a trailing slash): the journal of a watch on
    // it records its files under that text.
    let config = parse(&GOOD.replace("/srv/drop/products", "/srv/x/../drop/./products/")).unwrap();
    assert_eq!(config.watches[0].path, Path::new("/srv/x/../drop/products"));
    assert_eq!(without_dot_dot(Path::new("/../a/..")), Path::new("/"));
    assert_eq!(without_dot_dot(Path::new("../a/b/..")), Path::new("../a"));
}

#[test]
fn a_vendor_defined_twice_is_refused_with_its_line() {
    let second = "  erp:\n    kind: feishu\n    app_id: cli_x\n    app_secret: other\n";
    let text = GOOD.replace("watches:\n", &format!("{second}watches:\n"));
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err == "/etc/imgsyncd/daemon.yaml:12: vendors.erp: is defined twice; give each vendor a name of its own",
        "{err}"
    );
    // `status` and `files` still read the journal meanwhile, as they did before this refusal.
    let path = Path::new("/etc/imgsyncd/daemon.yaml");
    let readers = Config::parse_with(&text, path, Resolve::JournalReaders).unwrap();
    assert_eq!(readers.vendors["erp"].settings.kind(), VendorKind::Feishu);
}

#[test]
fn a_poll_period_of_nothing_is_raised_to_the_shortest() {
    let text = GOOD.replace("vendor: erp\n", "vendor: erp\n    poll: 0s\n");
    assert_eq!(parse(&text).unwrap().watches[0].poll, Some(MIN_POLL));
    assert_eq!(
        parse(&text).unwrap().watches[0].poll_raised_from,
        Some(Duration::ZERO),
        "said by `check`"
    );
    let text = GOOD.replace("vendor: erp\n", "vendor: erp\n    poll: 300ms\n");
    assert_eq!(parse(&text).unwrap().watches[0].poll_raised_from, None);
    assert_eq!(
        parse(&text).unwrap().watches[0].poll,
        Some(Duration::from_millis(300))
    );
}

#[test]
fn a_config_that_cannot_be_read_says_why_once() {
    let err = Config::load(Path::new("/nonexistent/imgsyncd.yaml")).unwrap_err();
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(
        shown.matches("No such file or directory").count(),
        1,
        "{shown}"
    );
}

#[test]
fn a_config_that_is_not_a_map_says_what_it_should_be() {
    let err = parse("- journal: /tmp/j\n").unwrap_err().to_string();
    assert!(
        err.contains("expected a map of settings (journal, workers, settle, vendors, watches, …)")
            && !err.contains("RawConfig"),
        "{err}"
    );
}

#[test]
fn yaml_syntax_errors_carry_the_line() {
    let err = parse("workers: 4\nsettle: [\n").unwrap_err().to_string();
    assert!(err.starts_with("/etc/imgsyncd/daemon.yaml:"), "{err}");
}

#[test]
fn relative_paths_are_anchored_at_the_config_folder() {
    let text = GOOD.replace("/var/lib/imgsyncd/journal.sqlite3", "state/journal.sqlite3");
    assert_eq!(
        parse(&text).unwrap().journal,
        PathBuf::from("/etc/imgsyncd/state/journal.sqlite3")
    );
}

#[test]
fn the_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("kingdee_app_secret");
    std::fs::write(&secret, "x\n").unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/daemon.example.yaml"))
        .unwrap()
        .replace("${KINGDEE_CLIENT_SECRET}", "client-secret")
        .replace("${FEISHU_APP_SECRET}", "feishu-secret")
        .replace("${JIANDAOYUN_API_KEY}", "jiandaoyun-key")
        .replace(
            "${CREDENTIALS_DIRECTORY}/kingdee_app_secret",
            &secret.display().to_string(),
        );
    let config = parse(&text).unwrap();
    assert_eq!(config.vendors["erp"].per_second, Some(5));
    assert_eq!(config.watches[0].path, PathBuf::from("/srv/drop/products"));
    assert_eq!(config.vendors["wiki"].settings.kind(), VendorKind::Feishu);
    assert_eq!(config.watches[1].on_remove, OnRemove::Keep);
    let forms = jiandaoyun(&config);
    assert_eq!(forms.watch_roots, [PathBuf::from("/srv/drop/forms")]);
    let record = forms.create_record.as_ref().unwrap();
    assert_eq!(record.image_widget, "_widget_1432728651402");
    assert_eq!(
        record.fields["_widget_1432728651404"].to_string(),
        "{width}×{height} px"
    );
    assert_eq!(config.watches[2].on_remove, OnRemove::Keep);
}

const FEISHU: &str = "\
journal: /var/lib/imgsyncd/journal.sqlite3
vendors:
  wiki:
    kind: feishu
    app_id: cli_a1b2c3
    app_secret: s3cret-feishu
watches:
  - path: /srv/drop/wiki
    vendor: wiki
";

fn feishu(config: &Config) -> &FeishuConfig {
    match &config.vendors["wiki"].settings {
        VendorSettings::Feishu(f) => f,
        other => panic!("wiki is not a feishu vendor: {other:?}"),
    }
}

#[test]
fn a_feishu_vendor_gets_its_defaults() {
    let config = parse(FEISHU).unwrap();
    let wiki = &config.vendors["wiki"];
    assert_eq!(wiki.settings.kind(), VendorKind::Feishu);
    assert_eq!(wiki.base_url, "https://open.feishu.cn");
    assert_eq!((wiki.per_second, wiki.per_minute), (None, None));
    let f = feishu(&config);
    assert_eq!(f.app_id, "cli_a1b2c3");
    assert_eq!(f.app_secret.expose(), "s3cret-feishu");
    let watch = &config.watches[0];
    assert_eq!(watch.on_remove, OnRemove::Keep, "lingo cannot delete");
    assert!(watch.filter.accepts(Path::new("favicon.ICO")), "icons too");
    assert!(!watch.filter.accepts(Path::new("notes.txt")));
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[test]
fn a_lark_vendor_sets_its_base_url_and_rates() {
    let text = FEISHU.replace(
        "    app_id: cli_a1b2c3\n",
        "    app_id: cli_a1b2c3\n    base_url: https://open.larksuite.com/\n    per_second: 10\n    per_minute: 600\n",
    );
    let config = parse(&text).unwrap();
    let wiki = &config.vendors["wiki"];
    assert_eq!(wiki.base_url, "https://open.larksuite.com");
    assert_eq!((wiki.per_second, wiki.per_minute), (Some(10), Some(600)));
}

#[test]
fn on_remove_delete_is_refused_for_feishu_naming_the_line() {
    let text = FEISHU.replace(
        "    vendor: wiki\n",
        "    vendor: wiki\n    on_remove: delete\n",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert_eq!(
        err,
        "/etc/imgsyncd/daemon.yaml:10: watches[0].on_remove: feishu lingo has no file delete API; \
         use `keep` (the default for a feishu vendor)"
    );
    let text = FEISHU.replace(
        "    vendor: wiki\n",
        "    vendor: wiki\n    on_remove: keep\n",
    );
    assert_eq!(parse(&text).unwrap().watches[0].on_remove, OnRemove::Keep);
}

#[test]
fn a_feishu_secret_from_the_environment_or_a_file() {
    let text = FEISHU.replace("s3cret-feishu", "${IMGSYNCD_TEST_FEISHU_SURELY_UNSET}");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:6: vendors.wiki.app_secret: \
         environment variable IMGSYNCD_TEST_FEISHU_SURELY_UNSET is not set"
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("feishu_app_secret");
    std::fs::write(&secret, "from-a-file\n").unwrap();
    let text = FEISHU.replace(
        "app_secret: s3cret-feishu",
        &format!("app_secret_file: {}", secret.display()),
    );
    assert_eq!(
        feishu(&parse(&text).unwrap()).app_secret.expose(),
        "from-a-file"
    );
    let text = FEISHU.replace("    app_secret: s3cret-feishu\n", "");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:3: vendors.wiki.app_secret: \
         is required (or app_secret_file with the path of a file holding it)"
    );
}

#[test]
fn a_feishu_vendor_needs_its_app_id_and_no_foreign_keys() {
    let err = parse(&FEISHU.replace("    app_id: cli_a1b2c3\n", ""))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/etc/imgsyncd/daemon.yaml:3: vendors.wiki.app_id: is required"
    );
    let text = FEISHU.replace("    app_id:", "    domain: https://tf.jdy.com\n    app_id:");
    let err = parse(&text).unwrap_err().to_string();
    assert_eq!(
        err,
        "/etc/imgsyncd/daemon.yaml:5: vendors.wiki.domain: is not a key of a feishu vendor"
    );
    let text = FEISHU.replace("    app_id:", "    per_second: 0\n    app_id:");
    let err = parse(&text).unwrap_err().to_string();
    assert_eq!(
        err,
        "/etc/imgsyncd/daemon.yaml:5: vendors.wiki.per_second: must be at least 1"
    );
}

const JIANDAOYUN: &str = "\
journal: /var/lib/imgsyncd/journal.sqlite3
vendors:
  forms:
    kind: jiandaoyun
    api_key: s3cret-jdy-key
    app_id: 59264073a2a60c0c08e20bfb
    entry_id: 59264073a2a60c0c08e20bfd
    create_record:
      image_widget: _widget_1432728651402
      fields:
        _widget_1432728651403: \"{filename}\"
        _widget_1432728651404: \"{width}×{height} px, {size} bytes\"
watches:
  - path: /srv/drop/forms
    vendor: forms
  - path: /srv/drop/more-forms
    vendor: forms
";

fn jiandaoyun(config: &Config) -> &JiandaoyunConfig {
    match &config.vendors["forms"].settings {
        VendorSettings::Jiandaoyun(j) => j,
        other => panic!("forms is not a jiandaoyun vendor: {other:?}"),
    }
}

#[test]
fn a_jiandaoyun_vendor_gets_its_defaults_and_its_record_template() {
    let config = parse(JIANDAOYUN).unwrap();
    let forms = &config.vendors["forms"];
    assert_eq!(forms.settings.kind(), VendorKind::Jiandaoyun);
    assert_eq!(forms.base_url, "https://api.jiandaoyun.com");
    assert_eq!((forms.per_second, forms.per_minute), (None, None));
    let j = jiandaoyun(&config);
    assert_eq!(j.api_key.expose(), "s3cret-jdy-key");
    assert_eq!(j.app_id, "59264073a2a60c0c08e20bfb");
    assert_eq!(j.entry_id, "59264073a2a60c0c08e20bfd");
    assert_eq!(
        j.watch_roots,
        [
            PathBuf::from("/srv/drop/forms"),
            PathBuf::from("/srv/drop/more-forms")
        ],
        "the roots feeding it, for {{relpath}}"
    );
    let record = j.create_record.as_ref().unwrap();
    assert_eq!(record.image_widget, "_widget_1432728651402");
    let fill = |p: Placeholder| match p {
        Placeholder::Width => "640".to_string(),
        Placeholder::Height => "480".to_string(),
        other => other.name().to_string(),
    };
    assert_eq!(
        record.fields["_widget_1432728651404"].render(fill),
        "640×480 px, size bytes"
    );
    assert_eq!(
        record.fields["_widget_1432728651403"].render(fill),
        "filename"
    );
    for watch in &config.watches {
        assert_eq!(watch.on_remove, OnRemove::Keep, "jiandaoyun cannot delete");
        assert!(!watch.filter.accepts(Path::new("favicon.ico")));
        assert!(watch.filter.accepts(Path::new("a/Photo.JPG")));
    }
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[test]
fn create_record_is_optional_and_the_rate_can_be_lowered() {
    let text = JIANDAOYUN
        .split("    create_record:")
        .next()
        .unwrap()
        .to_string()
        + "    per_second: 5\n    base_url: https://jdy.example.com/\nwatches:\n  - path: /srv/drop/forms\n    vendor: forms\n";
    let config = parse(&text).unwrap();
    let forms = &config.vendors["forms"];
    assert_eq!(forms.per_second, Some(5));
    assert_eq!(forms.base_url, "https://jdy.example.com");
    assert_eq!(jiandaoyun(&config).create_record, None);
}

#[test]
fn an_unknown_placeholder_names_its_line_and_field() {
    let text = JIANDAOYUN.replace("{width}×", "{widht}×");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:12: vendors.forms.create_record.fields._widget_1432728651404: \
         unknown placeholder `{widht}`; known: {filename} {path} {relpath} {sha256} {size} \
         {width} {height}"
    );
    let text = JIANDAOYUN.replace("\"{filename}\"", "\"{filename\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "/etc/imgsyncd/daemon.yaml:11: vendors.forms.create_record.fields._widget_1432728651403: \
             unterminated placeholder"
        ),
        "{err}"
    );
}

#[test]
fn a_record_needs_its_image_widget_apart_from_its_fields() {
    let text = JIANDAOYUN.replace("      image_widget: _widget_1432728651402\n", "");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:8: vendors.forms.create_record.image_widget: is required"
    );
    let text = JIANDAOYUN.replace("_widget_1432728651403:", "_widget_1432728651402:");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:11: vendors.forms.create_record.fields._widget_1432728651402: \
         is the image_widget; the image widget holds the file's key"
    );
    let text = JIANDAOYUN.replace(
        "image_widget: _widget_1432728651402",
        "image_widget: \"a b\"",
    );
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:9: vendors.forms.create_record.image_widget: \
         `a b` is not a widget name like _widget_1432728651402"
    );
    let text = JIANDAOYUN.replace("      fields:", "      widgets: {}\n      fields:");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("unknown field `widgets`"), "{err}");
}

#[test]
fn on_remove_delete_is_refused_for_jiandaoyun_naming_the_line() {
    let text = JIANDAOYUN.replace(
        "    vendor: forms\n  - path: /srv/drop/more-forms",
        "    vendor: forms\n    on_remove: delete\n  - path: /srv/drop/more-forms",
    );
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:16: watches[0].on_remove: jiandaoyun has no file delete API \
         (a key lives as long as the record that holds it); use `keep` (the default for a \
         jiandaoyun vendor)"
    );
}

#[test]
fn a_jiandaoyun_key_from_the_environment_or_a_file_and_no_foreign_keys() {
    let text = JIANDAOYUN.replace("s3cret-jdy-key", "${IMGSYNCD_TEST_JDY_SURELY_UNSET}");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:5: vendors.forms.api_key: \
         environment variable IMGSYNCD_TEST_JDY_SURELY_UNSET is not set"
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("jdy_api_key");
    std::fs::write(&key, "from-a-file\n").unwrap();
    let text = JIANDAOYUN.replace(
        "api_key: s3cret-jdy-key",
        &format!("api_key_file: {}", key.display()),
    );
    assert_eq!(
        jiandaoyun(&parse(&text).unwrap()).api_key.expose(),
        "from-a-file"
    );
    let text = JIANDAOYUN.replace("    api_key: s3cret-jdy-key\n", "");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:3: vendors.forms.api_key: \
         is required (or api_key_file with the path of a file holding it)"
    );
    let text = JIANDAOYUN.replace("    entry_id: 59264073a2a60c0c08e20bfd\n", "");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:3: vendors.forms.entry_id: is required"
    );
    let text = JIANDAOYUN.replace("    app_id:", "    app_secret: x\n    app_id:");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:6: vendors.forms.app_secret: is not a key of a jiandaoyun vendor"
    );
    let text = FEISHU.replace(
        "    app_secret: s3cret-feishu\n",
        "    app_secret: s3cret-feishu\n    create_record:\n      image_widget: _widget_1\n",
    );
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "/etc/imgsyncd/daemon.yaml:7: vendors.wiki.create_record: is not a key of a feishu vendor"
    );
}

#[test]
fn patterns_with_folders_match_the_path_and_the_others_the_name_alone() {
    let strings = |s: &[&str]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let filter = NameFilter::new(
        &strings(&["*.png", "scans/**/*.TIF"]),
        &strings(&["drafts/*", "*.tmp"]),
    )
    .unwrap();
    let takes = |path: &str| filter.accepts_in_folder(Path::new(path));
    assert!(takes("a/b/Photo.PNG"), "a name pattern, in any folder");
    assert!(takes("scans/2026/page.tif"), "a path pattern, case aside");
    assert!(
        !takes("other/page.tif"),
        "* and ** below a named folder only"
    );
    assert!(!takes("drafts/x.png"), "excluded by its path");
    assert!(takes("a/drafts/x.png"), "drafts/* is anchored at the root");
    assert!(!takes("a/x.png.tmp"));
    // A class may take what a name cannot have: its patterns are matched against the path too.
    let classes = NameFilter::new(&strings(&["a[!b]c.png"]), &[]).unwrap();
    assert!(classes.accepts_in_folder(Path::new("f/axc.png")));
    assert!(!classes.accepts_in_folder(Path::new("f/abc.png")));
}

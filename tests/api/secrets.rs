//! Secrets stay secret: the store URL's password never reaches the log or an error, whatever fails.

use std::process::Command;

const PASSWORD: &str = "hunter2-Sup3rSecret";

fn run(args: &[&str], url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff-ledger"))
        .args(args)
        .env("LEDGER__STORE__URL", url)
        .env("LEDGER__SERVER__BIND", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .output()
        .expect("run handoff-ledger");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

/// The test server's URL for `database`, with [`PASSWORD`] in it (trust authentication ignores it).
fn url_with_password(database: &str) -> String {
    let admin = crate::common::pg_admin_url();
    let mut url = reqwest::Url::parse(&admin).unwrap();
    url.set_password(Some(PASSWORD)).unwrap();
    url.set_path(database);
    url.to_string()
}

#[test]
fn the_store_password_is_never_printed_when_the_store_fails() {
    let url = url_with_password("no_such_database_for_the_secrets_test");
    let shown = url.replace(PASSWORD, "***");
    for args in [&["serve"][..], &["migrate"], &["keys", "list"], &["replay"]] {
        let (ok, output) = run(args, &url);
        assert!(!ok, "{args:?} should fail");
        assert!(!output.contains(PASSWORD), "{args:?} printed the password:\n{output}");
        assert!(output.contains(&shown), "{args:?}:\n{output}");
    }
}

#[tokio::test]
async fn the_store_password_is_not_printed_on_success_either() {
    let db = crate::common::PgDatabase::create().await;
    let url = url_with_password(&db.name);
    let (ok, output) = run(&["migrate"], &url);
    assert!(ok, "{output}");
    assert!(!output.contains(PASSWORD), "{output}");
    assert!(output.contains(&url.replace(PASSWORD, "***")), "{output}");
}

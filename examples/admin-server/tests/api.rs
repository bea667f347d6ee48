//! End-to-end: the real `keyvault` binary on SQLite, through every row of CONTRACT §4.

mod common;

use common::Env;

#[test]
fn every_route_answers_as_the_contract_says_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    common::routes::walk_every_route(&Env::sqlite(dir.path()));
}

#[test]
fn a_trusted_proxy_forwards_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite(dir.path()).with("KEYVAULT_TRUSTED_PROXIES", "127.0.0.0/8");
    let admin = env.token("admin");
    let s = env.serve();
    let r = s
        .req("POST", "/v1/keys")
        .token(&admin)
        .header("X-Forwarded-For", "203.0.113.9")
        .json(&serde_json::json!({"name": "via proxy"}))
        .send();
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let a = s
        .req("GET", &format!("/v1/audit?target_id={id}"))
        .token(&admin)
        .send()
        .json();
    assert_eq!(a["items"][0]["source_ip"], "203.0.113.9");
}

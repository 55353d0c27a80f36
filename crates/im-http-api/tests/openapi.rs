//! The committed OpenAPI document is what the code generates.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let generated = im_http_api::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "crates/im-http-api/openapi.json is stale: run `cargo xtask openapi` (or UPDATE_OPENAPI=1 cargo test) and commit it"
    );
}

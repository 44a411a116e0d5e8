//! The OpenAPI document against the router.

/// The document names every route the router serves (and the router is the list
/// below): a route added without its documentation fails here.
#[test]
fn the_openapi_document_covers_every_route() {
    let doc = <super::ApiDoc as utoipa::OpenApi>::openapi();
    let json = serde_json::to_value(&doc).unwrap();
    let paths = json["paths"].as_object().unwrap();
    let expected = [
        ("/v1/health", "get"),
        ("/v1/instances", "get"),
        ("/v1/instances/{id}", "get"),
        ("/v1/instances/{id}/ping", "post"),
        ("/v1/sets/{id}/failover", "post"),
        ("/v1/sets/{id}/failover/{action}", "post"),
        ("/v1/sets/{id}/semi-sync", "put"),
        ("/v1/instances/{id}/metadata", "get"),
        ("/v1/instances/{id}/metadata/{key}", "get"),
        ("/v1/instances/{id}/metadata/{key}", "put"),
        ("/v1/instances/{id}/metadata/{key}", "delete"),
        ("/v1/sets", "get"),
        ("/v1/sets", "post"),
        ("/v1/sets/{id}", "get"),
        ("/v1/sets/{id}/replicas", "post"),
        ("/v1/sets/{id}/replicas/{instance}", "delete"),
        ("/v1/sets/{id}/switchover", "post"),
        ("/v1/instances/{id}/backups", "post"),
        ("/v1/backups", "get"),
        ("/v1/backups/{id}", "get"),
        ("/v1/backups/{id}", "delete"),
        ("/v1/backups/{id}/cancel", "post"),
        ("/v1/workflows", "get"),
        ("/v1/workflows/{id}", "get"),
        ("/v1/workflows/{id}/cancel", "post"),
        ("/v1/audit", "get"),
        ("/v1/events", "get"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    let source = include_str!("mod.rs");
    let router = &source[source.find("pub fn router").unwrap()..source.find(".fallback(").unwrap()];
    let routes = router.matches("\"/v1/").count();
    // One .route per path (methods chained), plus /v1/openapi.json itself.
    assert_eq!(
        paths.len() + 1,
        routes,
        "a route without its document, or the reverse"
    );
    assert!(json["components"]["schemas"]["SetView"].is_object());
}

//! The OpenAPI document (`GET /api/openapi.json`) stays true: the router serves exactly
//! its paths and methods, with the security it states; the README's endpoint table lists
//! the same operations; and real answers, successes and errors, match the schemas the
//! document gives for their status, with no undeclared field.

use std::collections::BTreeSet;
use std::time::Duration;

use parley_server::access::{Access, AccessConfig};
use parley_test_support::TestDb;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{TestApp, fast_demo};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn spawn_auth() -> TestApp {
    TestApp::spawn_with(TestDb::new().await, fast_demo(), Access::new(AccessConfig::default()).expect("access"), |_| {})
        .await
}

async fn token(app: &TestApp, principal: &str) -> String {
    let client = app.db.pool.get().await.expect("client");
    let (_, token) = parley_db::api_token::create(&client, principal, false).await.expect("create token");
    token.expose().to_owned()
}

/// The served document, checked to be the one the code generates.
async fn served_document(app: &TestApp) -> Value {
    let resp = app.http.get(app.url("/api/openapi.json")).send().await.expect("get document");
    assert_eq!(resp.status(), 200, "the document is public");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.expect("document is JSON");
    assert_eq!(doc, parley_server::openapi::document());
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "OpenAPI 3: {}", doc["openapi"]);
    doc
}

/// A server with token access, alice's token and its served document: what a
/// [`Checker`] needs.
async fn documented_app() -> (TestApp, String, Value) {
    let app = spawn_auth().await;
    let alice = token(&app, "alice").await;
    let doc = served_document(&app).await;
    (app, alice, doc)
}

/// (method, path template) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS.iter().filter(|m| item.get(**m).is_some()).map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

/// The operation object of `method path`.
fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> &'d Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the document");
    op
}

/// (method, path template) of every row of the README's "Web API" table.
fn readme_operations() -> BTreeSet<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README");
    let table = readme.split("## Web API").nth(1).expect("a Web API section").split("\n## ").next().unwrap_or("");
    let mut found = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = row.trim_start_matches('|').split(" |").next().unwrap_or("");
        let mut last: Option<(String, String)> = None;
        for span in first_cell.split('`').skip(1).step_by(2) {
            let op = match span.split_once(' ') {
                Some((method, path)) => (method.to_owned(), path.split('?').next().unwrap_or(path).to_owned()),
                // `/reset` after `POST /api/conversations/{id}/cancel`: a sibling path.
                None => {
                    let (method, path) = last.clone().expect("a sibling follows a full `METHOD /path`");
                    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                    (method, format!("{parent}{span}"))
                }
            };
            found.insert(op.clone());
            last = Some(op);
        }
    }
    found
}

#[tokio::test]
async fn router_serves_exactly_the_documented_operations_with_the_documented_security() {
    let app = spawn_auth().await;
    let doc = served_document(&app).await;
    let documented = operations(&doc);
    assert!(documented.len() >= 18, "{documented:?}");
    assert_eq!(readme_operations(), documented, "README's Web API table vs the OpenAPI document");

    for path in doc["paths"].as_object().expect("paths").keys() {
        let concrete = path.replace("{id}", &Uuid::new_v4().to_string());
        for method in METHODS {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let mut req = app.http.request(m, app.url(&concrete));
            if method == "get" && path.ends_with("/events") {
                req = req.timeout(Duration::from_secs(5));
            }
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            match doc["paths"][path].get(method) {
                None => assert_eq!(status, 405, "{method} {path} is not documented, so not served: {body}"),
                Some(op) => {
                    // No token: a protected operation answers 401 before anything else;
                    // a public one (`security: []`) answers as usual.
                    let public = op["security"].as_array().is_some_and(Vec::is_empty);
                    if public {
                        assert_eq!(status, 200, "{method} {path} is public: {body}");
                    } else {
                        assert_eq!(status, 401, "{method} {path} needs a token: {body}");
                        assert_eq!(body["error"]["code"], "unauthorized");
                        assert!(op["responses"].get("401").is_some(), "{method} {path} documents its 401");
                    }
                }
            }
        }
    }
    // The API's own fallback: an undocumented path under /api is not served.
    let resp = app.http.get(app.url("/api/nothing-here")).send().await.expect("get");
    assert_eq!(resp.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn document_declares_security_parameters_and_the_event_stream() {
    let app = TestApp::spawn().await;
    let doc = served_document(&app).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(
        (schemes["access_token"]["in"].as_str(), schemes["access_token"]["name"].as_str()),
        (Some("query"), Some("access_token"))
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));

    let events = operation(&doc, "GET", "/api/conversations/{id}/events");
    assert_eq!(events["security"], json!([{"bearer": []}, {"access_token": []}]));
    assert!(events["responses"]["200"]["content"]["text/event-stream"].is_object(), "{events}");
    let params = |op: &Value| -> BTreeSet<(String, String)> {
        op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| (p["in"].as_str().unwrap_or("").to_owned(), p["name"].as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert!(
        params(events)
            .is_superset(&[pair("path", "id"), pair("query", "after"), pair("header", "Last-Event-ID")].into())
    );
    let post = operation(&doc, "POST", "/api/conversations/{id}/messages");
    assert!(params(post).contains(&pair("header", "Idempotency-Key")));
    assert!(
        params(operation(&doc, "GET", "/api/sessions")).is_superset(
            &[
                pair("query", "status"),
                pair("query", "conversation_id"),
                pair("query", "limit"),
                pair("query", "after")
            ]
            .into()
        )
    );
    // Lists page by cursor; `offset` is gone, and the description says so.
    let conversations = operation(&doc, "GET", "/api/conversations");
    assert_eq!(params(conversations), [pair("query", "after"), pair("query", "limit")].into());
    assert!(conversations["description"].as_str().is_some_and(|d| d.contains("`offset`")), "{conversations}");
    let turns = operation(&doc, "GET", "/api/turns");
    assert!(
        params(turns).is_superset(&[pair("query", "status"), pair("query", "after"), pair("query", "limit")].into())
    );
    assert!(turns["responses"]["403"].is_object(), "admin-only: documents its 403");
    for list in ["ConversationList", "SessionList", "TurnList"] {
        assert!(doc["components"]["schemas"][list]["properties"]["next"].is_object(), "{list} has `next`");
    }
    // The stream's first event without a position, and its data.
    let description = events["responses"]["200"]["description"].as_str().unwrap_or_default();
    assert!(description.contains("`snapshot`"), "{description}");
    assert!(doc["components"]["schemas"]["Snapshot"]["properties"]["replay_after_seq"].is_object());

    // Operation ids are unique, and every link names one of them.
    let ids: Vec<&str> = operations(&doc)
        .iter()
        .map(|(m, p)| operation(&doc, m, p)["operationId"].as_str().expect("operationId"))
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate operationIds: {ids:?}");
    let queued = resolve(&doc, &post["responses"]["202"]);
    assert_eq!(queued["links"]["GetTurn"]["operationId"], "turns_show");
    for (method, path) in operations(&doc) {
        for response in operation(&doc, &method, &path)["responses"].as_object().expect("responses").values() {
            for link in resolve(&doc, response)["links"].as_object().into_iter().flat_map(|l| l.values()) {
                assert!(unique.contains(link["operationId"].as_str().unwrap_or("")), "{method} {path}: {link}");
            }
        }
    }

    // Every error response is the shared error body, and each protected operation
    // documents its 401.
    let error_ref = json!({"$ref": "#/components/schemas/ErrorBody"});
    for (method, path) in operations(&doc) {
        let op = operation(&doc, &method, &path);
        for (status, response) in op["responses"].as_object().expect("responses") {
            let response = resolve(&doc, response);
            if status.starts_with('4') || (status == "503" && !path.ends_with("readyz")) {
                assert_eq!(response["content"]["application/json"]["schema"], error_ref, "{method} {path} {status}");
            }
        }
        if path.starts_with("/api/") && path != "/api/openapi.json" {
            assert!(op["responses"].get("401").is_some() && op["responses"].get("503").is_some(), "{method} {path}");
        }
    }
    for (status, header) in [("401", "WWW-Authenticate"), ("429", "Retry-After"), ("503", "Retry-After")] {
        let response = resolve(&doc, &post["responses"][status]);
        assert!(response["headers"][header].is_object(), "{status} declares {header}: {response}");
    }
    app.stop().await;
}

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let (app, alice, doc) = documented_app().await;
    let checker = Checker { app: &app, doc: &doc, token: &alice };

    let conv = checker.call("POST", "/api/conversations", "/api/conversations", Some(json!({"title": "t"})), 201).await;
    let conv = conv["conversation_id"].as_str().expect("id").to_owned();
    let c = format!("/api/conversations/{conv}");
    checker.call("GET", &c, "/api/conversations/{id}", None, 200).await;
    let messages = format!("{c}/messages");
    let m = "/api/conversations/{id}/messages";
    let queued = checker.call("POST", &messages, m, Some(json!({"text": "hello"})), 202).await;
    let turn = checker.wait_completed(&queued).await;
    let list = checker.call("GET", "/api/conversations?limit=10", "/api/conversations", None, 200).await;
    assert!(list["conversations"][0]["resume_after_seq"].is_i64(), "lists carry the turn state: {list}");
    assert!(list["next"].is_null(), "one page: {list}");
    checker.call("GET", "/api/conversations?offset=10", "/api/conversations", None, 400).await;
    checker.call("GET", "/api/conversations?after=nope", "/api/conversations", None, 400).await;
    // Listing turns across conversations is for admins only.
    checker.call("GET", "/api/turns?status=failed", "/api/turns", None, 403).await;
    let root = {
        let client = app.db.pool.get().await.expect("client");
        let (_, token) = parley_db::api_token::create(&client, "root", true).await.expect("create token");
        token.expose().to_owned()
    };
    let admin = Checker { app: &app, doc: &doc, token: &root };
    let turns = admin.call("GET", "/api/turns?status=queued&limit=1", "/api/turns", None, 200).await;
    assert!(turns["turns"].is_array() && turns["next"].is_null(), "{turns}");
    admin.call("GET", "/api/turns?status=completed", "/api/turns", None, 400).await;
    let status = checker.call("POST", &messages, m, Some(json!({"text": "/status"})), 200).await;
    assert_eq!((status["command"].as_str(), status["ok"].as_bool()), (Some("status"), Some(true)));
    let unknown = checker.call("POST", &messages, m, Some(json!({"text": "/frobnicate"})), 200).await;
    assert!(unknown["command"].is_null());
    let page = checker.call("GET", &format!("{messages}?limit=1"), m, None, 200).await;
    assert!(page["next_after"].is_i64());
    checker.call("GET", &format!("{messages}?after=999999999"), m, None, 200).await;
    let sessions = checker
        .call("GET", &format!("/api/sessions?conversation_id={conv}&status=active"), "/api/sessions", None, 200)
        .await;
    let session = sessions["sessions"][0]["session_id"].as_str().expect("session").to_owned();
    let detail = checker.call("GET", &format!("/api/sessions/{session}"), "/api/sessions/{id}", None, 200).await;
    assert_eq!(detail["turns"][0]["turn_id"], turn.as_str());
    assert!(detail["turns_next"].is_null(), "{detail}");
    let turns = checker
        .call("GET", &format!("/api/sessions/{session}/turns?limit=1"), "/api/sessions/{id}/turns", None, 200)
        .await;
    assert_eq!(turns["turns"][0]["turn_id"], turn.as_str());

    // Errors, each with its documented status and the shared body.
    checker.call("DELETE", &format!("/api/sessions/{session}"), "/api/sessions/{id}", None, 409).await;
    checker.call("POST", &format!("{c}/cancel"), "/api/conversations/{id}/cancel", None, 409).await;
    checker.call("POST", &format!("{c}/pause"), "/api/conversations/{id}/pause", None, 200).await;
    checker.call("POST", &format!("{c}/resume"), "/api/conversations/{id}/resume", None, 200).await;
    checker.call("POST", &format!("{c}/reset"), "/api/conversations/{id}/reset", None, 200).await;
    checker.call("GET", "/api/conversations/nope", "/api/conversations/{id}", None, 400).await;
    checker.call("GET", &format!("/api/turns/{}", Uuid::new_v4()), "/api/turns/{id}", None, 404).await;
    checker.call("GET", "/api/sessions?status=bogus", "/api/sessions", None, 400).await;
    checker.call("GET", "/api/conversations?limit=99999999999999999999", "/api/conversations", None, 400).await;
    checker.call("POST", &messages, m, Some(json!({"text": "a\u{0}b"})), 400).await;
    let resp =
        app.http.post(app.url(&messages)).bearer_auth(&alice).body("{\"text\":\"hi\"}").send().await.expect("post");
    checker.check(m, "POST", 415, resp).await;
    let resp = app.http.get(app.url(&c)).bearer_auth("not-a-token").send().await.expect("get");
    checker.check("/api/conversations/{id}", "GET", 401, resp).await;
    let resp = app
        .http
        .post(app.url(&messages))
        .bearer_auth(&alice)
        .json(&json!({"text": "x".repeat(70 * 1024)}))
        .send()
        .await
        .expect("post");
    checker.check(m, "POST", 413, resp).await;
    checker.call("DELETE", &c, "/api/conversations/{id}", None, 204).await;
    let resp = app.http.get(app.url("/readyz")).send().await.expect("readyz");
    checker.check("/readyz", "GET", 200, resp).await;
    let resp = app.http.get(app.url("/healthz")).send().await.expect("healthz");
    checker.check("/healthz", "GET", 200, resp).await;
    app.stop().await;
}

/// Sends requests as one principal and checks each answer against the document.
struct Checker<'a> {
    app: &'a TestApp,
    doc: &'a Value,
    token: &'a str,
}

impl Checker<'_> {
    /// Polls the turn of a `202` answer (checking each answer) until it is `completed`;
    /// returns the turn's id.
    async fn wait_completed(&self, queued: &Value) -> String {
        let turn = queued["turn_id"].as_str().expect("turn").to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.call("GET", &format!("/api/turns/{turn}"), "/api/turns/{id}", None, 200).await["status"]
            != "completed"
        {
            assert!(tokio::time::Instant::now() < deadline, "turn never completed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        turn
    }

    /// `method url` with an optional JSON body; asserts the status `want` and that the
    /// answer matches the document's schema for `template`, and returns the body.
    async fn call(&self, method: &str, url: &str, template: &str, body: Option<Value>, want: u16) -> Value {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.app.http.request(m, self.app.url(url)).bearer_auth(self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        self.check(template, method, want, resp).await
    }

    async fn check(&self, template: &str, method: &str, want: u16, resp: reqwest::Response) -> Value {
        let status = resp.status().as_u16();
        let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
        let text = resp.text().await.expect("body");
        assert_eq!(status, want, "{method} {template}: {text}");
        let op = operation(self.doc, method, template);
        let response = resolve(self.doc, &op["responses"][status.to_string()]);
        assert!(response.is_object(), "{method} {template} does not document {status}");
        let Some(schema) = response["content"]["application/json"].get("schema") else {
            assert!(text.is_empty(), "{method} {template} {status} documents no body but got {text}");
            return Value::Null;
        };
        assert_eq!(content_type.as_deref(), Some("application/json"), "{method} {template} {status}");
        let body: Value = serde_json::from_str(&text).expect("JSON body");
        validate(self.doc, schema, &body, &format!("{method} {template} {status}"));
        body
    }
}

/// Follows a `$ref` (to a component of the document) until a non-reference value.
fn resolve<'d>(doc: &'d Value, mut value: &'d Value) -> &'d Value {
    while let Some(pointer) = value.get("$ref").and_then(Value::as_str) {
        value = doc.pointer(pointer.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling {pointer}"));
    }
    value
}

/// Validates `body` against `schema` (which may refer to the document's components) as
/// JSON Schema 2020-12, then checks that no object carries a field its schema does not
/// declare (utoipa's schemas allow extra fields; an undocumented field is drift too).
fn validate(doc: &Value, schema: &Value, body: &Value, what: &str) {
    let mut root = doc.clone();
    let object = root.as_object_mut().expect("document object");
    object.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    object.insert("allOf".into(), json!([schema]));
    let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{what}: schema does not compile: {e}"));
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{what}: {body} does not match its schema: {errors:#?}");
    assert_declared(doc, schema, body, what);
}

/// Asserts that every field of every object in `value` is declared by its schema.
fn assert_declared(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(branches) = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array) {
        // Nullable references are `oneOf: [{"type": "null"}, {"$ref": …}]`.
        if !value.is_null()
            && let Some(branch) = branches.iter().find(|b| resolve(doc, b).get("type") != Some(&json!("null")))
        {
            assert_declared(doc, branch, value, at);
        }
        return;
    }
    match value {
        Value::Object(fields) => {
            let mut declared = serde_json::Map::new();
            collect_properties(doc, schema, &mut declared);
            if declared.is_empty() {
                return; // a free-form object (`reply_target`, `metadata`, …)
            }
            for (name, field) in fields {
                let field_schema =
                    declared.get(name).unwrap_or_else(|| panic!("{at}: field `{name}` is not documented"));
                assert_declared(doc, field_schema, field, &format!("{at}.{name}"));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    assert_declared(doc, item_schema, item, &format!("{at}[{i}]"));
                }
            }
        }
        _ => {}
    }
}

/// The properties of an object schema, through `allOf` (serde `flatten`).
fn collect_properties(doc: &Value, schema: &Value, into: &mut serde_json::Map<String, Value>) {
    let schema = resolve(doc, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        into.extend(props.clone());
    }
    for part in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        collect_properties(doc, part, into);
    }
}

#[tokio::test]
async fn settings_assistants_and_export_answers_match_their_documented_schemas() {
    let (app, alice, doc) = documented_app().await;
    let checker = Checker { app: &app, doc: &doc, token: &alice };
    let conv = checker.call("POST", "/api/conversations", "/api/conversations", Some(json!({"title": "t"})), 201).await;
    let c = format!("/api/conversations/{}", conv["conversation_id"].as_str().expect("id"));
    let t = "/api/conversations/{id}";
    let queued = checker
        .call(
            "POST",
            &format!("{c}/messages"),
            "/api/conversations/{id}/messages",
            Some(json!({"text": "[demo:tool] hi"})),
            202,
        )
        .await;
    checker.wait_completed(&queued).await;
    let changed = checker.call("PATCH", &c, t, Some(json!({"model": "opus", "system_prompt": "Be brief."})), 200).await;
    assert_eq!(changed["session_ended"], "model-changed");
    checker.call("PATCH", &c, t, Some(json!({"title": "same session"})), 200).await;
    checker.call("PATCH", &c, t, Some(json!({"permission_mode": "bypassPermissions"})), 400).await;
    checker.call("PATCH", &c, t, Some(json!({"unknown": true})), 400).await;
    checker.call("PATCH", &format!("/api/conversations/{}", Uuid::new_v4()), t, Some(json!({})), 404).await;
    let list = checker.call("GET", "/api/assistants", "/api/assistants", None, 200).await;
    assert!(list["assistants"].as_array().is_some_and(|a| !a.is_empty()));
    let export = checker.call("GET", &format!("{c}/export"), "/api/conversations/{id}/export", None, 200).await;
    assert_eq!(export["sessions"].as_array().map(Vec::len), Some(1));
    checker.call("GET", &format!("{c}/export?format=pdf"), "/api/conversations/{id}/export", None, 400).await;
    let op = operation(&doc, "GET", "/api/conversations/{id}/export");
    assert!(op["responses"]["200"]["content"]["text/markdown"].is_object(), "{op}");
    // Every reference in the document resolves (a fuzzer skips what does not).
    fn refs<'d>(v: &'d Value, out: &mut Vec<&'d str>) {
        match v {
            Value::Object(m) => {
                out.extend(m.get("$ref").and_then(Value::as_str));
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        assert!(doc.pointer(r.trim_start_matches('#')).is_some(), "dangling reference {r}");
    }
    app.stop().await;
}

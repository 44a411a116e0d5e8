//! A typed, blocking client of the conductor's API: the CLI's and the end-to-end
//! tests'. Every method is one endpoint; every answer is a type of this crate.

use std::collections::BTreeMap;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tandem_proto::{BackupId, InstanceId};

use crate::*;

/// Why a call did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the conductor at {base} ({what}): {reason}")]
    Unreachable {
        base: String,
        what: String,
        reason: String,
    },
    /// The conductor answered with an error.
    #[error("{}", .body.error)]
    Api { status: u16, body: ErrorBody },
    /// The answer is not what this endpoint answers (another version of the conductor?).
    #[error("unexpected answer to {what} ({status}): {reason}")]
    BadAnswer {
        what: String,
        status: u16,
        reason: String,
    },
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The error's kind when the conductor answered with one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Api { body, .. } => Some(body.kind),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A query's fields as query-string pairs (through its serde form: one spelling).
fn query_pairs(query: &impl Serialize) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(query) else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some((k, s)),
            other => Some((k, other.to_string())),
        })
        .collect()
}

/// A path segment is escaped whole: a metadata key may hold `/` or `?`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    tls: ureq::tls::TlsConfig,
    /// `Bearer <token>`, when there is a token.
    authorization: Option<String>,
}

impl Client {
    /// A client of the conductor at `base` (`http://host:port`), with an API token and,
    /// for `https://`, the CA (PEM) its certificate chains to (else the public roots).
    pub fn new(base: &str, token: Option<String>, ca_pem: Option<&[u8]>) -> Result<Client> {
        let tls = tls(ca_pem)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .tls_config(tls.clone())
            .build()
            .into();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            agent,
            tls,
            authorization: token.map(|t| format!("Bearer {t}")),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn with_token<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) => request.header("Authorization", a),
            None => request,
        }
    }

    fn unreachable(&self, what: &str, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            base: self.base.clone(),
            what: what.into(),
            reason: e.to_string(),
        }
    }

    fn answer<T: DeserializeOwned>(
        &self,
        what: &str,
        r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut response = r.map_err(|e| self.unreachable(what, e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.unreachable(what, e))?;
        let bad = |reason: String| ClientError::BadAnswer {
            what: what.into(),
            status,
            reason,
        };
        if !(200..300).contains(&status) {
            let body = serde_json::from_str::<ErrorBody>(&text).map_err(|e| {
                bad(format!(
                    "{e}: {}",
                    text.chars().take(200).collect::<String>()
                ))
            })?;
            return Err(ClientError::Api { status, body });
        }
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let call = || {
            self.with_token(self.agent.get(format!("{}{path}", self.base)))
                .call()
        };
        // A GET is safe to repeat: a kept-alive connection the server closed just as
        // it was reused fails once ("Peer disconnected"); a second try opens a new one.
        let r = match call() {
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                call()
            }
            ok => ok,
        };
        self.answer(path, r)
    }

    /// One page of a list endpoint: `query`'s fields as the query string, the next
    /// page's cursor from the `x-next-page` header.
    fn get_page<T: DeserializeOwned>(&self, path: &str, query: &impl Serialize) -> Result<Page<T>> {
        let pairs = query_pairs(query);
        let call = || {
            let mut request = self.agent.get(format!("{}{path}", self.base));
            for (k, v) in &pairs {
                request = request.query(k, v);
            }
            self.with_token(request).call()
        };
        let r = match call() {
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                call()
            }
            ok => ok,
        };
        let next = r.as_ref().ok().and_then(|response| {
            let v = response.headers().get(crate::NEXT_PAGE)?;
            Some(v.to_str().ok()?.to_owned())
        });
        let items = self.answer(path, r)?;
        Ok(Page { items, next })
    }

    /// Every page of a list endpoint, following the cursors.
    fn get_all<T: DeserializeOwned, Q: Serialize + Clone>(
        &self,
        path: &str,
        query: &Q,
        set_after: impl Fn(&mut Q, String),
    ) -> Result<Vec<T>> {
        let mut query = query.clone();
        let mut all = Vec::new();
        loop {
            let page: Page<T> = self.get_page(path, &query)?;
            all.extend(page.items);
            match page.next {
                Some(next) => set_after(&mut query, next),
                None => return Ok(all),
            }
        }
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let r = self
            .with_token(self.agent.post(format!("{}{path}", self.base)))
            .send_json(body);
        self.answer(path, r)
    }

    fn put<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let r = self
            .with_token(self.agent.put(format!("{}{path}", self.base)))
            .send_json(body);
        self.answer(path, r)
    }

    fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self
            .with_token(self.agent.delete(format!("{}{path}", self.base)))
            .call();
        self.answer(path, r)
    }

    // ---- instances ----

    pub fn health(&self) -> Result<Health> {
        self.get("/v1/health")
    }
    /// Every instance that reported (all pages).
    pub fn instances(&self) -> Result<Vec<InstanceView>> {
        self.instances_matching(&InstanceQuery::default())
    }
    /// Every instance `query`'s filters keep (all pages from its `after`).
    pub fn instances_matching(&self, query: &InstanceQuery) -> Result<Vec<InstanceView>> {
        self.get_all("/v1/instances", query, |q, next| q.after = Some(next))
    }
    pub fn instances_page(&self, query: &InstanceQuery) -> Result<Page<InstanceView>> {
        self.get_page("/v1/instances", query)
    }
    pub fn instance(&self, id: &InstanceId) -> Result<InstanceView> {
        self.get(&format!("/v1/instances/{id}"))
    }
    pub fn ping(&self, id: &InstanceId) -> Result<PingResult> {
        self.post(&format!("/v1/instances/{id}/ping"), &())
    }
    pub fn enrol(&self, id: &InstanceId, request: &EnrolRequest) -> Result<EnrolmentView> {
        self.post(&format!("/v1/instances/{id}/enrolment"), request)
    }
    pub fn rekey(&self, id: &InstanceId) -> Result<EnrolmentView> {
        self.delete(&format!("/v1/instances/{id}/enrolment"))
    }
    pub fn enrolments(&self) -> Result<Vec<EnrolmentView>> {
        self.get("/v1/enrolments")
    }

    // ---- metadata ----

    pub fn metadata(&self, id: &InstanceId) -> Result<BTreeMap<String, String>> {
        self.get(&format!("/v1/instances/{id}/metadata"))
    }
    pub fn metadata_get(&self, id: &InstanceId, key: &str) -> Result<MetadataEntry> {
        self.get(&format!("/v1/instances/{id}/metadata/{}", seg(key)))
    }
    pub fn metadata_set(&self, id: &InstanceId, key: &str, value: &str) -> Result<MetadataEntry> {
        self.put(
            &format!("/v1/instances/{id}/metadata/{}", seg(key)),
            &MetadataValue {
                value: value.into(),
            },
        )
    }
    pub fn metadata_delete(&self, id: &InstanceId, key: &str) -> Result<Deleted> {
        self.delete(&format!("/v1/instances/{id}/metadata/{}", seg(key)))
    }

    // ---- replica sets ----

    /// Every replica set (all pages).
    pub fn sets(&self) -> Result<Vec<SetView>> {
        self.sets_matching(&SetQuery::default())
    }
    pub fn sets_matching(&self, query: &SetQuery) -> Result<Vec<SetView>> {
        self.get_all("/v1/sets", query, |q, next| q.after = Some(next))
    }
    pub fn sets_page(&self, query: &SetQuery) -> Result<Page<SetView>> {
        self.get_page("/v1/sets", query)
    }
    pub fn set(&self, id: &str) -> Result<SetView> {
        self.get(&format!("/v1/sets/{}", seg(id)))
    }
    pub fn create_set(&self, request: &CreateSet) -> Result<WorkflowRow> {
        self.post("/v1/sets", request)
    }
    pub fn add_replicas(&self, set: &str, request: &AddReplica) -> Result<WorkflowRow> {
        self.post(&format!("/v1/sets/{}/replicas", seg(set)), request)
    }
    pub fn detach(&self, set: &str, instance: &InstanceId) -> Result<WorkflowRow> {
        self.delete(&format!("/v1/sets/{}/replicas/{instance}", seg(set)))
    }
    pub fn pause_replica(
        &self,
        set: &str,
        instance: &InstanceId,
        request: &PauseReplica,
    ) -> Result<WorkflowRow> {
        self.post(
            &format!("/v1/sets/{}/replicas/{instance}/pause", seg(set)),
            request,
        )
    }
    pub fn resume_replica(&self, set: &str, instance: &InstanceId) -> Result<WorkflowRow> {
        self.post(
            &format!("/v1/sets/{}/replicas/{instance}/resume", seg(set)),
            &(),
        )
    }
    pub fn delay_replica(
        &self,
        set: &str,
        instance: &InstanceId,
        request: &DelayReplica,
    ) -> Result<WorkflowRow> {
        self.post(
            &format!("/v1/sets/{}/replicas/{instance}/delay", seg(set)),
            request,
        )
    }
    pub fn filter_replica(
        &self,
        set: &str,
        instance: &InstanceId,
        request: &FilterReplica,
    ) -> Result<WorkflowRow> {
        self.post(
            &format!("/v1/sets/{}/replicas/{instance}/filter", seg(set)),
            request,
        )
    }
    pub fn switchover(&self, set: &str, request: &Switchover) -> Result<WorkflowRow> {
        self.post(&format!("/v1/sets/{}/switchover", seg(set)), request)
    }
    pub fn failover(&self, set: &str, request: &Failover) -> Result<WorkflowRow> {
        self.post(&format!("/v1/sets/{}/failover", seg(set)), request)
    }
    pub fn failover_control(&self, set: &str, action: FailoverAction) -> Result<FailoverState> {
        self.post(&format!("/v1/sets/{}/failover/{action}", seg(set)), &())
    }
    pub fn semi_sync(&self, set: &str, enabled: bool) -> Result<WorkflowRow> {
        self.put(
            &format!("/v1/sets/{}/semi-sync", seg(set)),
            &SemiSyncRequest { enabled },
        )
    }

    // ---- backups ----

    pub fn take_backup(
        &self,
        instance: &InstanceId,
        request: &TakeBackup,
    ) -> Result<BackupStarted> {
        self.post(&format!("/v1/instances/{instance}/backups"), request)
    }
    pub fn backups(&self, instance: Option<&InstanceId>) -> Result<BackupList> {
        match instance {
            Some(i) => self.get(&format!("/v1/backups?instance={i}")),
            None => self.get("/v1/backups"),
        }
    }
    pub fn backup(&self, id: &BackupId) -> Result<BackupStatus> {
        self.get(&format!("/v1/backups/{}", seg(id.as_str())))
    }
    pub fn delete_backup(&self, id: &BackupId) -> Result<Deleted> {
        self.delete(&format!("/v1/backups/{}", seg(id.as_str())))
    }
    pub fn cancel_backup(&self, id: &BackupId) -> Result<CancelRequested> {
        self.post(&format!("/v1/backups/{}/cancel", seg(id.as_str())), &())
    }

    // ---- zones, pool and placement rules ----

    pub fn zones(&self) -> Result<ZonesView> {
        self.get("/v1/zones")
    }
    pub fn pool(&self) -> Result<Vec<PoolEntry>> {
        self.get("/v1/pool")
    }
    pub fn pool_add(&self, instances: Vec<InstanceId>) -> Result<Vec<PoolEntry>> {
        self.post("/v1/pool", &PoolChange { instances })
    }
    pub fn pool_remove(&self, instance: &InstanceId) -> Result<Deleted> {
        self.delete(&format!("/v1/pool/{instance}"))
    }
    pub fn rules(&self) -> Result<Vec<PlacementRule>> {
        self.get("/v1/rules")
    }
    pub fn create_rule(&self, request: &CreateRule) -> Result<PlacementRule> {
        self.post("/v1/rules", request)
    }
    /// By id or name.
    pub fn delete_rule(&self, rule: &str) -> Result<Deleted> {
        self.delete(&format!("/v1/rules/{}", seg(rule)))
    }
    pub fn add_set_rules(&self, set: &str, rules: Vec<String>) -> Result<Vec<PlacementRule>> {
        self.post(&format!("/v1/sets/{}/rules", seg(set)), &SetRules { rules })
    }
    pub fn dr_switch(&self, set: &str, request: &DrSwitch) -> Result<WorkflowRow> {
        self.post(&format!("/v1/sets/{}/dr/switch", seg(set)), request)
    }
    pub fn dr_failover(&self, set: &str, request: &DrFailover) -> Result<WorkflowRow> {
        self.post(&format!("/v1/sets/{}/dr/failover", seg(set)), request)
    }
    pub fn rebuild_master(&self, set: &str, request: &RebuildMaster) -> Result<WorkflowRow> {
        self.post(&format!("/v1/sets/{}/rebuild-master", seg(set)), request)
    }
    pub fn remove_set_rule(&self, set: &str, rule: &str) -> Result<Vec<PlacementRule>> {
        self.delete(&format!("/v1/sets/{}/rules/{}", seg(set), seg(rule)))
    }

    // ---- workflows and audit ----

    /// The newest workflows (one page of the default size).
    pub fn workflows(&self) -> Result<Vec<WorkflowRow>> {
        Ok(self.workflows_page(&WorkflowQuery::default())?.items)
    }
    pub fn workflows_page(&self, query: &WorkflowQuery) -> Result<Page<WorkflowRow>> {
        self.get_page("/v1/workflows", query)
    }
    pub fn workflow(&self, id: &str) -> Result<WorkflowDetail> {
        self.get(&format!("/v1/workflows/{}", seg(id)))
    }
    pub fn cancel_workflow(&self, id: &str) -> Result<WorkflowRow> {
        self.post(&format!("/v1/workflows/{}/cancel", seg(id)), &())
    }
    /// The newest audit entries (one page of the default size).
    pub fn audit(&self) -> Result<Vec<JournalEntry>> {
        Ok(self.audit_page(&AuditQuery::default())?.items)
    }
    pub fn audit_page(&self, query: &AuditQuery) -> Result<Page<JournalEntry>> {
        self.get_page("/v1/audit", query)
    }
    pub fn audit_requests(&self) -> Result<Vec<ApiRequest>> {
        self.get("/v1/audit/requests")
    }

    /// The live event stream, one event at a time, until the connection ends.
    pub fn events(&self) -> Result<Events> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(self.tls.clone())
            .build()
            .into();
        let r = self
            .with_token(agent.get(format!("{}/v1/events", self.base)))
            .call();
        let response = r.map_err(|e| self.unreachable("/v1/events", e))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            return Err(
                match self.answer::<serde::de::IgnoredAny>("/v1/events", Ok(response)) {
                    Err(e) => e,
                    Ok(_) => ClientError::BadAnswer {
                        what: "/v1/events".into(),
                        status,
                        reason: "the event stream was refused".into(),
                    },
                },
            );
        }
        Ok(Events {
            lines: std::io::BufRead::lines(std::io::BufReader::new(
                response.into_body().into_reader(),
            )),
        })
    }
}

/// The events of [`Client::events`]: each the JSON text of one event (as sent) and the
/// event read from it.
pub struct Events {
    lines: std::io::Lines<std::io::BufReader<ureq::BodyReader<'static>>>,
}

impl Iterator for Events {
    type Item = Result<(String, ApiEvent)>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next()? {
                Ok(line) => line,
                Err(e) => {
                    return Some(Err(ClientError::Unreachable {
                        base: String::new(),
                        what: "/v1/events".into(),
                        reason: format!("the event stream broke: {e}"),
                    }))
                }
            };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim().to_owned();
            let event = serde_json::from_str(&data).map_err(|e| ClientError::BadAnswer {
                what: "/v1/events".into(),
                status: 200,
                reason: format!("{e}: {data}"),
            });
            return Some(event.map(|e| (data, e)));
        }
    }
}

/// The TLS settings for an `https://` conductor: its own CA, or the public roots.
fn tls(ca_pem: Option<&[u8]>) -> Result<ureq::tls::TlsConfig> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(pem) = ca_pem {
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(ClientError::Setup(
                "the CA file holds no certificate".into(),
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    Ok(tls.build())
}

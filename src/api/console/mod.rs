//! The support console at `/ui/`: server-rendered pages (templates compiled into the binary, no script)
//! over the same store the API reads. Sessions are cookies (`HttpOnly; SameSite=Strict`) with a per-session
//! CSRF token that every form carries.

pub mod pages;
pub mod session;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header::{self, ContentType};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chrono::{NaiveDateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use self::pages::{Frame, Section};
use self::session::{csrf_matches, Session, COOKIE};
use super::conversations::{encode_cursor, render_transcript, ListParams};
use super::error::ApiError;
use super::AppState;
use crate::auth::{AuthError, Principal, Scope};
use crate::transcript::TranscriptFormat;

pub use self::session::Sessions;

/// The console's stylesheet: its own rules, then the transcript's (shared with the printable page).
fn stylesheet() -> String {
    format!("{}\n{}", include_str!("console.css"), crate::transcript::html::STYLE)
}

/// Pages may load the console's stylesheet and post forms to the console; nothing else.
const CONSOLE_CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Who is looking at the console, and what they may do.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The key's name (or `local` when the service runs without keys).
    pub name: String,
    /// May read raw events and the quarantine (`events:read`).
    pub can_read_events: bool,
    /// May redrive quarantined deliveries (`admin`).
    pub can_redrive: bool,
    /// The session's CSRF token, for forms.
    pub csrf: Option<String>,
}

/// Registers the console's routes under `/ui`.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(to_console))
        .route("/ui/assets/console.css", web::get().to(css))
        .route("/ui/login", web::get().to(login_form))
        .route("/ui/login", web::post().to(login))
        .route("/ui/logout", web::post().to(logout))
        .route("/ui/", web::get().to(search))
        .route("/ui/conversations/{id}", web::get().to(conversation))
        .route("/ui/conversations/{id}/transcript.{format}", web::get().to(transcript))
        .route(
            "/ui/conversations/{id}/conversation.json",
            web::get().to(conversation_json),
        )
        .route("/ui/conversations/{id}/events", web::get().to(events))
        .route("/ui/conversations/{id}/events.json", web::get().to(events_json))
        .route("/ui/quarantine", web::get().to(quarantine))
        .route("/ui/quarantine/{id}", web::get().to(quarantine_entry))
        .route("/ui/quarantine/{id}/redrive", web::post().to(redrive));
}

async fn to_console() -> HttpResponse {
    redirect("/ui/")
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(stylesheet())
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn page(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(ContentType::html())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("content-security-policy", CONSOLE_CSP))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "same-origin"))
        .body(body)
}

/// The session cookie: `HttpOnly`, `SameSite=Strict`, scoped to the console, `Secure` behind TLS.
fn session_cookie(req: &HttpRequest, value: String) -> Cookie<'static> {
    let secure = req.connection_info().scheme() == "https";
    Cookie::build(COOKIE, value)
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish()
}

fn session_id(req: &HttpRequest) -> Option<String> {
    req.cookie(COOKIE).map(|c| c.value().to_string())
}

/// A request the console has let in: who it is and its session.
struct Visit {
    viewer: Viewer,
    session_id: String,
    /// A cookie to set with the answer (an anonymous session just started).
    new_cookie: Option<Cookie<'static>>,
}

impl Visit {
    fn respond(&self, mut res: HttpResponse) -> HttpResponse {
        if let Some(cookie) = &self.new_cookie {
            // A cookie built by this module always renders as a valid header value.
            let _ = res.add_cookie(cookie);
        }
        res
    }
}

/// Lets a request in, or answers it: a page for a signed-in session whose key is still good (or for
/// everyone while the service runs open, like the API), the sign-in page for everyone else. The caller is
/// put in the request's extensions, so the request log names it.
async fn admit(state: &AppState, req: &HttpRequest) -> Result<Visit, Box<HttpResponse>> {
    if let Some(id) = session_id(req) {
        if let Some(session) = state.sessions.get(&id) {
            match principal_of(state, &session.credential).await {
                Ok(principal) => return visit(req, principal, id, &session, None),
                Err(AuthError::Store(e)) => return Err(Box::new(unavailable(e))),
                // Revoked (or the service is no longer open): this session is over.
                Err(_) => state.sessions.remove(&id),
            }
        }
    }
    match state.keys.identify(None).await {
        Ok(principal) => {
            // Open service: still a session, so that every form carries a token no other site knows.
            let id = state.sessions.create(String::new());
            let session = state
                .sessions
                .get(&id)
                .ok_or_else(|| Box::new(redirect(&login_url(req))))?;
            let cookie = session_cookie(req, id.clone());
            visit(req, principal, id, &session, Some(cookie))
        }
        Err(AuthError::Store(e)) => Err(Box::new(unavailable(e))),
        Err(_) => Err(Box::new(redirect(&login_url(req)))),
    }
}

/// Who a session's credential stands for now (the empty credential: the anonymous caller of an open service).
async fn principal_of(state: &AppState, credential: &str) -> Result<Principal, AuthError> {
    if credential.is_empty() {
        state.keys.identify(None).await
    } else {
        state.keys.authenticate(credential).await
    }
}

fn visit(
    req: &HttpRequest,
    principal: Principal,
    session_id: String,
    session: &Session,
    new_cookie: Option<Cookie<'static>>,
) -> Result<Visit, Box<HttpResponse>> {
    let viewer = Viewer {
        name: principal.name.clone(),
        can_read_events: principal.allows(Scope::EventsRead),
        can_redrive: principal.allows(Scope::Admin),
        csrf: Some(session.csrf.clone()),
    };
    if !principal.allows(Scope::ConversationsRead) {
        return Err(Box::new(page(
            StatusCode::FORBIDDEN,
            pages::error(
                &frame("Forbidden", Section::Conversations, &viewer, None),
                "Not allowed",
                "The console needs a key with the conversations:read scope. Sign out and sign in with another key.",
            ),
        )));
    }
    req.extensions_mut().insert(principal);
    Ok(Visit {
        viewer,
        session_id,
        new_cookie,
    })
}

fn unavailable(e: crate::store::StoreError) -> HttpResponse {
    tracing::error!(error = %e, "the console could not read the API keys");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::error(
            &Frame {
                title: "Unavailable",
                section: Section::SignIn,
                viewer: None,
                flash: None,
            },
            "Unavailable",
            "The service cannot check keys right now (its store is unreachable). Try again in a moment.",
        ),
    )
}

fn login_url(req: &HttpRequest) -> String {
    let next = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/ui/".into());
    format!("/ui/login?next={}", urlencode(&next))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only a console path is a place to go after signing in (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/ui/".to_string(),
    }
}

fn frame<'a>(title: &'a str, section: Section, viewer: &'a Viewer, flash: Option<&'a str>) -> Frame<'a> {
    Frame {
        title,
        section,
        viewer: Some(viewer),
        flash,
    }
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(state: web::Data<AppState>, req: HttpRequest, q: web::Query<LoginQuery>) -> HttpResponse {
    let next = safe_next(q.next.as_deref());
    match admit(&state, &req).await {
        Ok(visit) => visit.respond(redirect(&next)),
        Err(_) => page(StatusCode::OK, pages::login(None, &next)),
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    key: String,
    next: Option<String>,
}

async fn login(state: web::Data<AppState>, req: HttpRequest, form: web::Form<LoginForm>) -> HttpResponse {
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    let key = form.key.trim();
    let refused = |status, message: &str| page(status, pages::login(Some(message), &next));
    match state.keys.authenticate(key).await {
        Ok(principal) if principal.allows(Scope::ConversationsRead) => {
            // Always a new session id on sign-in (no fixation); the old session, if any, ends.
            if let Some(old) = session_id(&req) {
                state.sessions.remove(&old);
            }
            let id = state.sessions.create(key.to_string());
            tracing::info!(key = %principal.name, "console sign-in");
            let mut res = redirect(&next);
            let _ = res.add_cookie(&session_cookie(&req, id));
            res
        }
        Ok(principal) => refused(
            StatusCode::FORBIDDEN,
            &format!("The key `{}` does not grant conversations:read.", principal.name),
        ),
        Err(AuthError::Store(e)) => unavailable(e),
        Err(_) => refused(
            StatusCode::UNAUTHORIZED,
            "That key is not valid, or it has been revoked.",
        ),
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// The session a form was posted from, when its CSRF token is the session's.
fn posted_session(state: &AppState, req: &HttpRequest, token: &str) -> Option<(String, Session)> {
    let id = session_id(req)?;
    let session = state.sessions.get(&id)?;
    csrf_matches(&session, token).then_some((id, session))
}

fn forbidden_form() -> HttpResponse {
    page(
        StatusCode::FORBIDDEN,
        pages::error(
            &Frame {
                title: "Refused",
                section: Section::SignIn,
                viewer: None,
                flash: None,
            },
            "Refused",
            "This form did not come from your console session (its token is missing or stale). Reload the page and try again.",
        ),
    )
}

async fn logout(state: web::Data<AppState>, req: HttpRequest, form: web::Form<CsrfForm>) -> HttpResponse {
    let Some((id, _)) = posted_session(&state, &req, &form.csrf) else {
        return forbidden_form();
    };
    state.sessions.remove(&id);
    let mut res = redirect("/ui/login");
    let mut gone = session_cookie(&req, String::new());
    gone.make_removal();
    let _ = res.add_cookie(&gone);
    res
}

/// The search form as the browser sends it: every field a string, empty when not used.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchForm {
    /// Platform filter.
    pub platform: Option<String>,
    /// State filter.
    pub state: Option<String>,
    /// Disposition filter.
    pub disposition: Option<String>,
    /// SLA status filter.
    pub sla_status: Option<String>,
    /// Queue filter.
    pub queue: Option<String>,
    /// Agent filter.
    pub agent: Option<String>,
    /// External id filter.
    pub external_id: Option<String>,
    /// Started from (RFC 3339, or a `datetime-local` value read as UTC).
    pub since: Option<String>,
    /// Started before.
    pub until: Option<String>,
    /// Page size.
    pub limit: Option<String>,
    /// Paging cursor.
    pub cursor: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A `datetime-local` value (`2024-05-03T10:15` or with seconds) read as UTC; RFC 3339 passes through.
fn browser_time(v: &Option<String>) -> Option<String> {
    let v = non_empty(v)?;
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&v, format) {
            return Some(t.and_utc().to_rfc3339());
        }
    }
    Some(v)
}

impl SearchForm {
    fn list_params(&self) -> Result<ListParams, ApiError> {
        let limit = match non_empty(&self.limit) {
            Some(l) => Some(
                l.parse::<u32>()
                    .map_err(|_| ApiError::parameter("limit", "`limit` must be a number between 1 and 500"))?,
            ),
            None => None,
        };
        Ok(ListParams {
            platform: non_empty(&self.platform),
            external_id: non_empty(&self.external_id),
            state: non_empty(&self.state),
            disposition: non_empty(&self.disposition),
            sla_status: non_empty(&self.sla_status),
            queue: non_empty(&self.queue),
            agent: non_empty(&self.agent),
            since: browser_time(&self.since),
            until: browser_time(&self.until),
            limit,
            cursor: non_empty(&self.cursor),
        })
    }

    /// The query string of this search with another cursor (none = the first page).
    fn link(&self, cursor: Option<&str>) -> String {
        let fields = [
            ("platform", &self.platform),
            ("state", &self.state),
            ("disposition", &self.disposition),
            ("sla_status", &self.sla_status),
            ("queue", &self.queue),
            ("agent", &self.agent),
            ("external_id", &self.external_id),
            ("since", &self.since),
            ("until", &self.until),
            ("limit", &self.limit),
        ];
        let mut parts: Vec<String> = fields
            .iter()
            .filter_map(|(k, v)| non_empty(v).map(|v| format!("{k}={}", urlencode(&v))))
            .collect();
        if let Some(c) = cursor {
            parts.push(format!("cursor={}", urlencode(c)));
        }
        if parts.is_empty() {
            "/ui/".into()
        } else {
            format!("/ui/?{}", parts.join("&"))
        }
    }
}

async fn search(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let form = web::Query::<SearchForm>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let results = match form.list_params().and_then(ListParams::into_filter) {
        Err(e) => Err(e.body().error.message),
        Ok(filter) => {
            let now = filter.now.unwrap_or_else(Utc::now);
            match state.store.list_conversations(&filter).await {
                Ok(page) => Ok(pages::SearchResults {
                    items: page.items.into_iter().map(|c| c.as_of(now)).collect(),
                    next: page.next.map(|n| form.link(Some(&encode_cursor(n)))),
                }),
                Err(e) => Err(ApiError::from(e).body().error.message),
            }
        }
    };
    let status = if results.is_err() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let flash = state.sessions.take_flash(&visit.session_id);
    let body = pages::search(
        &frame("Conversations", Section::Conversations, &visit.viewer, flash.as_deref()),
        &form,
        results,
        &form.link(None),
    );
    visit.respond(page(status, body))
}

fn not_found_page(viewer: &Viewer, what: &str) -> HttpResponse {
    page(
        StatusCode::NOT_FOUND,
        pages::error(
            &frame("Not found", Section::Conversations, viewer, None),
            "Not found",
            what,
        ),
    )
}

fn failure_page(viewer: &Viewer, e: ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    let status = e.status_code();
    let message = e.body().error.message;
    page(
        status,
        pages::error(
            &frame("Error", Section::Conversations, viewer, None),
            "Something went wrong",
            &message,
        ),
    )
}

fn conversation_id(viewer: &Viewer, raw: &str) -> Result<Uuid, Box<HttpResponse>> {
    raw.parse()
        .map_err(|_| Box::new(not_found_page(viewer, &format!("`{raw}` is not a conversation id."))))
}

async fn conversation(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let id = match conversation_id(&visit.viewer, &path) {
        Ok(id) => id,
        Err(res) => return *res,
    };
    let found = async {
        let Some(c) = state.store.get_conversation(id).await? else {
            return Ok(None);
        };
        let messages = state.store.transcript(c.id).await?.map(|(_, m)| m).unwrap_or_default();
        Ok::<_, crate::store::StoreError>(Some((c.as_of(Utc::now()), messages)))
    }
    .await;
    let res = match found {
        Ok(Some((c, messages))) => {
            let title = format!("Conversation {}", c.id);
            page(
                StatusCode::OK,
                pages::conversation(
                    &frame(&title, Section::Conversations, &visit.viewer, None),
                    &c,
                    &messages,
                ),
            )
        }
        Ok(None) => not_found_page(&visit.viewer, &format!("There is no conversation {id}.")),
        Err(e) => failure_page(&visit.viewer, e.into()),
    };
    visit.respond(res)
}

async fn transcript(state: web::Data<AppState>, req: HttpRequest, path: web::Path<(String, String)>) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let (raw_id, raw_format) = path.into_inner();
    let id = match conversation_id(&visit.viewer, &raw_id) {
        Ok(id) => id,
        Err(res) => return *res,
    };
    let Ok(format) = raw_format.parse::<TranscriptFormat>() else {
        return not_found_page(&visit.viewer, &format!("There is no `{raw_format}` export."));
    };
    let res = match render_transcript(&state, id, format, None, None).await {
        Ok(mut res) => {
            if matches!(format, TranscriptFormat::Csv | TranscriptFormat::Jsonl) {
                let name = format!("attachment; filename=\"transcript-{id}.{}\"", format.as_str());
                if let Ok(value) = header::HeaderValue::from_str(&name) {
                    res.headers_mut().insert(header::CONTENT_DISPOSITION, value);
                }
            }
            res
        }
        Err(ApiError::NotFound(m)) => not_found_page(&visit.viewer, &m),
        Err(e) => failure_page(&visit.viewer, e),
    };
    visit.respond(res)
}

async fn conversation_json(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let id = match conversation_id(&visit.viewer, &path) {
        Ok(id) => id,
        Err(res) => return *res,
    };
    let res = match state.store.get_conversation(id).await {
        Ok(Some(c)) => HttpResponse::Ok().json(c.as_of(Utc::now())),
        Ok(None) => not_found_page(&visit.viewer, &format!("There is no conversation {id}.")),
        Err(e) => failure_page(&visit.viewer, e.into()),
    };
    visit.respond(res)
}

fn needs_events(viewer: &Viewer) -> Option<HttpResponse> {
    (!viewer.can_read_events).then(|| {
        page(
            StatusCode::FORBIDDEN,
            pages::error(
                &frame("Forbidden", Section::Conversations, viewer, None),
                "Not allowed",
                "Raw events and the quarantine need a key with the events:read scope.",
            ),
        )
    })
}

async fn events_of(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
) -> Result<(Uuid, Vec<crate::model::StoredEvent>), Box<HttpResponse>> {
    if let Some(res) = needs_events(viewer) {
        return Err(Box::new(res));
    }
    let id = conversation_id(viewer, raw)?;
    match state.store.conversation_events(id).await {
        Ok(Some(items)) => Ok((id, items)),
        Ok(None) => Err(Box::new(not_found_page(
            viewer,
            &format!("There is no conversation {id}."),
        ))),
        Err(e) => Err(Box::new(failure_page(viewer, e.into()))),
    }
}

async fn events(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let res = match events_of(&state, &visit.viewer, &path).await {
        Ok((id, items)) => page(
            StatusCode::OK,
            pages::events(
                &frame("Raw events", Section::Conversations, &visit.viewer, None),
                id,
                &items,
            ),
        ),
        Err(res) => *res,
    };
    visit.respond(res)
}

async fn events_json(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let res = match events_of(&state, &visit.viewer, &path).await {
        Ok((_, items)) => HttpResponse::Ok().json(super::conversations::EventList {
            items,
            next_after_seq: None,
            next_cursor: None,
        }),
        Err(res) => *res,
    };
    visit.respond(res)
}

#[derive(Debug, Deserialize)]
struct QuarantinePage {
    before: Option<i64>,
}

const QUARANTINE_PAGE: u32 = 50;

async fn quarantine(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    if let Some(res) = needs_events(&visit.viewer) {
        return visit.respond(res);
    }
    let before = web::Query::<QuarantinePage>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.before);
    let listed = async {
        let mut items = state.store.quarantine_summaries(QUARANTINE_PAGE, before).await?;
        super::log::attach_redrives(&state, items.iter_mut()).await?;
        Ok::<_, ApiError>(items)
    };
    let res = match listed.await {
        Ok(items) => {
            let next = (items.len() as u32 == QUARANTINE_PAGE)
                .then(|| items.last().map(|q| format!("/ui/quarantine?before={}", q.id)))
                .flatten();
            let flash = state.sessions.take_flash(&visit.session_id);
            page(
                StatusCode::OK,
                pages::quarantine(
                    &frame("Quarantine", Section::Quarantine, &visit.viewer, flash.as_deref()),
                    &items,
                    next,
                ),
            )
        }
        Err(e) => failure_page(&visit.viewer, e),
    };
    visit.respond(res)
}

async fn quarantine_entry(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    if let Some(res) = needs_events(&visit.viewer) {
        return visit.respond(res);
    }
    let Ok(id) = path.parse::<i64>() else {
        return visit.respond(not_found_page(&visit.viewer, "There is no such quarantine entry."));
    };
    let found = async {
        let mut entry = state.store.quarantine_entry(id).await?;
        if let Some(entry) = entry.as_mut() {
            super::log::attach_redrives(&state, std::iter::once(&mut entry.summary)).await?;
        }
        Ok::<_, ApiError>(entry)
    };
    let res = match found.await {
        Ok(Some(entry)) => {
            let title = format!("Refused delivery {id}");
            let flash = state.sessions.take_flash(&visit.session_id);
            page(
                StatusCode::OK,
                pages::quarantine_entry(
                    &frame(&title, Section::Quarantine, &visit.viewer, flash.as_deref()),
                    &entry,
                ),
            )
        }
        Ok(None) => not_found_page(
            &visit.viewer,
            &format!("There is no quarantine entry {id} (redriven entries stay; old ones expire)."),
        ),
        Err(e) => failure_page(&visit.viewer, e),
    };
    visit.respond(res)
}

/// The redrive button: the same redrive as `POST /v1/quarantine/{id}/redrive` (recorded on the entry with the
/// signed-in key's name), its outcome shown on the entry's page.
async fn redrive(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    let visit = match admit(&state, &req).await {
        Ok(v) => v,
        Err(res) => return *res,
    };
    if posted_session(&state, &req, &form.csrf).is_none() {
        return forbidden_form();
    }
    if !visit.viewer.can_redrive {
        return visit.respond(page(
            StatusCode::FORBIDDEN,
            pages::error(
                &frame("Forbidden", Section::Quarantine, &visit.viewer, None),
                "Not allowed",
                "Redriving a delivery needs a key with the admin scope.",
            ),
        ));
    }
    let Ok(id) = path.parse::<i64>() else {
        return visit.respond(not_found_page(&visit.viewer, "There is no such quarantine entry."));
    };
    let answer = super::operations::redrive(state.clone(), req.clone(), web::Path::from(id)).await;
    let message = match answer {
        Ok(res) => {
            let status = res.status();
            let body = actix_web::body::to_bytes(res.into_body()).await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            redrive_message(id, status, &body)
        }
        Err(e) => format!("Delivery {id} was not redriven: {}", e.body().error.message),
    };
    state.sessions.set_flash(&visit.session_id, message);
    visit.respond(redirect(&format!("/ui/quarantine/{id}")))
}

/// A sentence for a redrive's answer (the webhook's answer now).
fn redrive_message(id: i64, status: StatusCode, body: &serde_json::Value) -> String {
    if status.is_success() {
        let conversation = body["conversation_id"]
            .as_str()
            .map(|c| format!(" in conversation {c}"))
            .unwrap_or_default();
        if body["duplicate"] == serde_json::Value::Bool(true) {
            format!("Delivery {id} redriven: it was already stored{conversation}; nothing appended.")
        } else if let Some(seq) = body["seq"].as_i64() {
            let unknown = if status == StatusCode::ACCEPTED {
                " (as an event type this version does not know)"
            } else {
                ""
            };
            format!("Delivery {id} redriven: appended at log position {seq}{conversation}{unknown}.")
        } else {
            format!("Delivery {id} redriven: accepted ({status}).")
        }
    } else {
        let code = body["error"]["code"].as_str().unwrap_or("refused");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        format!("Delivery {id} is still refused: {} {code}: {message}", status.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_outcomes_read_as_sentences() {
        let appended = serde_json::json!({"event_id": "e", "seq": 42, "duplicate": false, "conversation_id": "c-1"});
        assert_eq!(
            redrive_message(7, StatusCode::OK, &appended),
            "Delivery 7 redriven: appended at log position 42 in conversation c-1."
        );
        let duplicate = serde_json::json!({"seq": 42, "duplicate": true, "conversation_id": "c-1"});
        assert_eq!(
            redrive_message(7, StatusCode::OK, &duplicate),
            "Delivery 7 redriven: it was already stored in conversation c-1; nothing appended."
        );
        let refused = serde_json::json!({"error": {"code": "invalid_payload", "message": "`roomId` is required"}});
        assert_eq!(
            redrive_message(7, StatusCode::UNPROCESSABLE_ENTITY, &refused),
            "Delivery 7 is still refused: 422 invalid_payload: `roomId` is required"
        );
    }

    #[test]
    fn only_console_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/ui/conversations/1")), "/ui/conversations/1");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui/");
        assert_eq!(safe_next(Some("//evil.example/ui/")), "/ui/");
        assert_eq!(safe_next(Some("/v1/events")), "/ui/");
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn browser_times_are_read_as_utc() {
        assert_eq!(
            browser_time(&Some("2024-05-03T10:15".into())).as_deref(),
            Some("2024-05-03T10:15:00+00:00")
        );
        assert_eq!(
            browser_time(&Some("2024-05-03T10:15:30Z".into())).as_deref(),
            Some("2024-05-03T10:15:30Z")
        );
        assert_eq!(browser_time(&Some("  ".into())), None);
    }

    #[test]
    fn paging_links_keep_the_filters() {
        let form = SearchForm {
            platform: Some("vcc".into()),
            queue: Some("sales & support".into()),
            state: Some(String::new()),
            ..SearchForm::default()
        };
        assert_eq!(
            form.link(Some("12_abc")),
            "/ui/?platform=vcc&queue=sales%20%26%20support&cursor=12_abc"
        );
        assert_eq!(SearchForm::default().link(None), "/ui/");
    }
}

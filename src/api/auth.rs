//! Access control at the edge: one middleware in front of every route, so no handler can forget it.
//! [`guard_for`] is the one table of what each route needs; the same table writes each operation's
//! security requirement into the OpenAPI document ([`SecurityAddon`]), so the two cannot drift.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
use std::future::{ready, Ready};

use super::error::ApiError;
use super::AppState;
use crate::auth::{bearer_token, Principal, Scope};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// Nothing: webhooks (they check their platform's token), health probes, metrics.
    Public,
    /// The support console (`/ui/*`): its handlers authenticate the session themselves.
    Console,
    /// Any valid key, whatever its scopes (the API's documentation).
    AnyKey,
    /// A key granting this scope.
    Key(Scope),
}

/// What a request needs, from its method and path. Anything not listed needs `admin`: a route
/// added without a line here is closed, not open.
pub(crate) fn guard_for(method: &Method, path: &str) -> Guard {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match segments.as_slice() {
        ["healthz"] | ["readyz"] | ["metrics"] => Guard::Public,
        ["webhooks", ..] => Guard::Public,
        ["ui", ..] => Guard::Console,
        ["openapi.json"] | ["docs", ..] if get => Guard::AnyKey,
        ["v1", "conversations"] | ["v1", "conversations", _] if get => Guard::Key(Scope::ConversationsRead),
        ["v1", "conversations", _, "transcript"] if get => Guard::Key(Scope::ConversationsRead),
        ["v1", "conversations", _, "events"] if get => Guard::Key(Scope::EventsRead),
        ["v1", "events"] | ["v1", "quarantine"] | ["v1", "quarantine", _] if get => Guard::Key(Scope::EventsRead),
        ["v1", "reports", _] if get => Guard::Key(Scope::ReportsRead),
        ["v1", "conversations", _, "messages"] | ["v1", "conversations", _, "handoff"] if post => {
            Guard::Key(Scope::CommandsWrite)
        }
        _ => Guard::Key(Scope::Admin),
    }
}

/// The key a request presents: `Authorization: Bearer <key>` (scheme case-insensitive).
pub(crate) fn presented_key(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
}

/// The middleware: identifies the caller, puts its [`Principal`] in the request's extensions, and
/// answers `401` (no or unknown key) or `403` (scope missing) before any handler runs.
pub(crate) async fn require_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let needed = match guard_for(req.method(), req.path()) {
        Guard::Public | Guard::Console => return next.call(req).await.map(|r| r.map_into_left_body()),
        Guard::AnyKey => None,
        Guard::Key(scope) => Some(scope),
    };
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        let e = ApiError::Unexpected(anyhow::anyhow!("no application state for the access check"));
        return Ok(req.into_response(e.error_response()).map_into_right_body());
    };
    let identified = state.keys.identify(presented_key(req.request())).await;
    let checked = identified.and_then(|p| match needed {
        Some(scope) => p.require(scope).map(|()| p),
        None => Ok(p),
    });
    match checked {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.call(req).await.map(|r| r.map_into_left_body())
        }
        Err(e) => {
            let e = ApiError::from(e);
            Ok(req.into_response(e.error_response()).map_into_right_body())
        }
    }
}

/// The caller of a request that passed [`require_key`], for handlers that need its name.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let principal = req.extensions().get::<Principal>().cloned();
        ready(principal.map(Caller).ok_or_else(|| {
            ApiError::Unauthenticated("an API key is required: send `Authorization: Bearer <key>`".into())
        }))
    }
}

/// The name of whoever made a request (the key's name, or `anonymous`), once [`require_key`] ran;
/// None for public routes. For request logs.
pub(crate) fn principal_name(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<Principal>().map(|p| p.name.clone())
}

/// Declares the bearer scheme and writes each operation's needed scope (from [`guard_for`]) and its
/// `401`/`403` answers into the OpenAPI document.
pub(crate) struct SecurityAddon;

/// Name of the security scheme in the OpenAPI document.
pub(crate) const SECURITY_SCHEME: &str = "api_key";

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::Operation;
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{Ref, ResponseBuilder};

        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`handoff-ledger keys create`, `POST /v1/keys`) sent as \
                         `Authorization: Bearer <key>`. Each operation lists the scope it needs; `admin` grants \
                         every scope; none listed = any valid key.",
                    ))
                    .build(),
            ),
        );
        let error = |text: &str| {
            ResponseBuilder::new()
                .description(text)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops: [(Method, &mut Option<Operation>); 4] = [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PUT, &mut item.put),
                (Method::DELETE, &mut item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op.as_mut() else { continue };
                let scopes: Vec<&str> = match guard_for(&method, path) {
                    Guard::Public | Guard::Console => continue,
                    Guard::AnyKey => vec![],
                    Guard::Key(scope) => vec![scope.as_str()],
                };
                op.security = Some(vec![SecurityRequirement::new(SECURITY_SCHEME, scopes)]);
                op.responses
                    .responses
                    .entry("401".into())
                    .or_insert_with(|| error("No API key, or an unknown or revoked one (`unauthorized`)").into());
                op.responses.responses.entry("403".into()).or_insert_with(|| {
                    error("The key does not grant the scope this operation needs (`forbidden`)").into()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_guard_and_unknown_ones_need_admin() {
        let id = "7f3c6a52-5b43-4d4e-9f5e-0e0b6b5b7f11";
        let cases = [
            (Method::GET, "/healthz".to_string(), Guard::Public),
            (Method::POST, "/webhooks/aivo-live".into(), Guard::Public),
            (Method::GET, "/ui/".into(), Guard::Console),
            (Method::GET, "/openapi.json".into(), Guard::AnyKey),
            (Method::GET, "/docs/".into(), Guard::AnyKey),
            (
                Method::GET,
                "/v1/conversations".into(),
                Guard::Key(Scope::ConversationsRead),
            ),
            (
                Method::GET,
                format!("/v1/conversations/{id}"),
                Guard::Key(Scope::ConversationsRead),
            ),
            (
                Method::GET,
                format!("/v1/conversations/{id}/transcript"),
                Guard::Key(Scope::ConversationsRead),
            ),
            (
                Method::GET,
                format!("/v1/conversations/{id}/events"),
                Guard::Key(Scope::EventsRead),
            ),
            (Method::GET, "/v1/events".into(), Guard::Key(Scope::EventsRead)),
            (Method::GET, "/v1/quarantine/3".into(), Guard::Key(Scope::EventsRead)),
            (Method::GET, "/v1/reports/sla".into(), Guard::Key(Scope::ReportsRead)),
            (
                Method::POST,
                format!("/v1/conversations/{id}/messages"),
                Guard::Key(Scope::CommandsWrite),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{id}/handoff"),
                Guard::Key(Scope::CommandsWrite),
            ),
            (Method::GET, "/v1/keys".into(), Guard::Key(Scope::Admin)),
            (
                Method::POST,
                "/v1/quarantine/3/redrive".into(),
                Guard::Key(Scope::Admin),
            ),
            (
                Method::DELETE,
                format!("/v1/conversations/{id}"),
                Guard::Key(Scope::Admin),
            ),
            (Method::GET, "/v1/something-new".into(), Guard::Key(Scope::Admin)),
            (Method::GET, "/favicon.ico".into(), Guard::Key(Scope::Admin)),
        ];
        for (method, path, guard) in cases {
            assert_eq!(guard_for(&method, &path), guard, "{method} {path}");
        }
    }
}

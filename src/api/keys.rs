//! `/v1/keys` (`admin`): create, list and revoke API keys. The CLI's `keys` subcommands do the same
//! through the same [`crate::auth::key::new_key`].

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::auth::key::StoredKey;
use crate::auth::{self, Scope};

/// `POST /v1/keys` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewKey {
    /// Unique name: who uses the key (it shows in request logs). 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// What the key may do (at least one).
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
}

/// A key as listed (never the key itself: only its hash is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    /// Name.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (recorded at most once a minute); null when never.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<StoredKey> for KeyInfo {
    fn from(k: StoredKey) -> Self {
        KeyInfo {
            name: k.name,
            scopes: k.scopes,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A new key: the only time the key itself is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// Name.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The key: send it as `Authorization: Bearer <key>`. It cannot be shown again.
    pub key: String,
}

/// The keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct KeyList {
    /// Keys by name.
    pub items: Vec<KeyInfo>,
}

/// Creates an API key; the answer is the only time the key is shown.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = NewKey,
    responses(
        (status = 201, description = "Created", body = CreatedKey),
        (status = 400, description = "Not JSON, or not `application/json`", body = ErrorBody),
        (status = 409, description = "A key of that name exists (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Bad name, no scope, or an unknown scope", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let NewKey { name, scopes } = body.into_inner();
    let (stored, key) = auth::key::new_key(&name, &scopes).map_err(|message| ApiError::InvalidPayload {
        field: if message.contains("scope") { "scopes" } else { "name" }.into(),
        message,
    })?;
    if !state.store.create_key(&stored).await? {
        return Err(ApiError::Conflict(format!("a key named `{name}` exists")));
    }
    state.keys.invalidate();
    tracing::info!(key = %stored.name, by = %caller.0.name, scopes = %auth::key::scopes_to_text(&stored.scopes), "API key created");
    Ok(HttpResponse::Created().json(CreatedKey {
        name: stored.name,
        scopes: stored.scopes,
        created_at: stored.created_at,
        key,
    }))
}

/// Lists the API keys: name, scopes, created, last used.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = state.store.list_keys().await?.into_iter().map(KeyInfo::from).collect();
    Ok(HttpResponse::Ok().json(KeyList { items }))
}

/// Revokes (deletes) an API key; the service refuses it from then on.
#[utoipa::path(
    delete, path = "/v1/keys/{name}", tag = "keys",
    params(("name" = String, Path, description = "Key name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No key of that name", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    )
)]
pub async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    if !state.store.revoke_key(&name).await? {
        return Err(ApiError::NotFound(format!("no key named `{name}`")));
    }
    state.keys.invalidate();
    tracing::info!(key = %name, by = %caller.0.name, "API key revoked");
    Ok(HttpResponse::NoContent().finish())
}

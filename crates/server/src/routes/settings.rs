//! `PATCH /api/conversations/{id}`: a conversation's settings (title, assistant, model,
//! appended system prompt, permission mode, working directory), and
//! `GET /api/assistants`: what those settings may be on this server.
//!
//! The rules (which changes end the assistant session, what a running turn does) are
//! the orchestrator's: see `parley_orchestrator::settings`.

use axum::extract::State;
use parley_db::conversation::Conversation;
use parley_orchestrator::settings::SettingsChange;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Json, Path, parse_id};
use crate::openapi::{
    BadRequest, NotFound, PayloadTooLarge, RequestTimeout, Unauthorized, Unavailable, UnsupportedMediaType,
};

/// A field that may be absent (`None`: unchanged) or `null` (`Some(None)`: back to the
/// server's default).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Body of `PATCH /api/conversations/{id}`: the settings to change. An absent field is
/// left as it is; `null` or `""` returns an optional setting to the server's default.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// A new title (at most 200 characters; `""` for none).
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]*$", max_length = 200)]
    pub title: Option<String>,
    /// Another configured assistant (see `GET /api/assistants`).
    #[serde(default)]
    pub assistant: Option<String>,
    /// The model, e.g. `opus` or `gpt-5`: letters, digits and `._:/@+-[]`, not starting
    /// with `-`; `null`: the assistant's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub model: Option<Option<String>>,
    /// Text appended to the assistant's system prompt (at most 10,000 characters);
    /// `null`: none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 10000, pattern = r"^[^\x00]*$")]
    pub system_prompt: Option<Option<String>>,
    /// The permission mode: one of the assistant's that the server allows (see
    /// `GET /api/assistants`); `null`: the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub permission_mode: Option<Option<String>>,
    /// The working directory, relative to the workspace root (the same rules as at
    /// creation); `null`: the conversation's own directory.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 1024, pattern = r"^[^\x00]*$")]
    pub cwd: Option<Option<String>>,
}

/// Answer of `PATCH /api/conversations/{id}`: the conversation with its new settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsAnswer {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: Conversation,
    /// Why the assistant session ended (`assistant-changed`, `cwd-changed`,
    /// `model-changed`, `system-prompt-changed`), when the change ended it: the next
    /// message starts a fresh session with the conversation's history. `null` when the
    /// session goes on.
    pub session_ended: Option<String>,
}

/// `PATCH /api/conversations/{id}` → `200` with the conversation. A change of assistant,
/// model, system prompt or working directory ends the assistant session
/// (`session_ended`); a running turn finishes with the settings it started with.
///
/// # Errors
/// 400 with `invalid_title`, `invalid_assistant`, `invalid_model`,
/// `invalid_system_prompt`, `invalid_permission_mode` or `invalid_cwd` (nothing is
/// stored), `invalid_json` for a malformed body; 404 for an unknown conversation (or
/// another principal's).
#[utoipa::path(
    patch,
    operation_id = "conversations_update",
    path = "/conversations/{id}",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    request_body(content = SettingsBody, description = "The settings to change; absent fields are kept"),
    responses(
        (status = 200, description = "Changed (or already so)", body = SettingsAnswer),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(body): Json<SettingsBody>,
) -> Result<Json<SettingsAnswer>, AppError> {
    let id = parse_id(&id, "conversation")?;
    let orch = &state.orchestrator;
    {
        let client = state.db().await?;
        principal.conversation(&client, id).await?;
    }
    let change = SettingsChange {
        title: body.title,
        assistant: body.assistant,
        model: body.model,
        system_prompt: body.system_prompt,
        permission_mode: body.permission_mode,
        cwd: body.cwd,
    };
    let changed = orch.change_settings(id, change).await?;
    Ok(Json(SettingsAnswer {
        conversation: changed.conversation,
        session_ended: changed.session_ended.map(|t| t.to_string()),
    }))
}

/// An assistant a conversation may use, as `GET /api/assistants` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantInfo {
    /// Its name (`conversation.assistant`).
    pub name: String,
    /// The permission modes a conversation with it may choose on this server, most
    /// restrictive first (empty: it has none, or the server allows none).
    pub permission_modes: Vec<String>,
}

/// Body of `GET /api/assistants`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantList {
    /// The assistant of new conversations.
    pub default: String,
    /// Every configured assistant, by name.
    pub assistants: Vec<AssistantInfo>,
}

/// `GET /api/assistants` → the configured assistants and the settings a conversation
/// may choose with each.
///
/// # Errors
/// 401 without a valid token.
#[utoipa::path(
    get,
    operation_id = "assistants_index",
    path = "/assistants",
    tag = "conversations",
    responses(
        (status = 200, description = "The configured assistants", body = AssistantList),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub async fn assistants(State(state): State<AppState>, _principal: Principal) -> Json<AssistantList> {
    let orch = &state.orchestrator;
    let policy = orch.settings_policy();
    Json(AssistantList {
        default: orch.config().default_assistant.clone(),
        assistants: policy
            .assistant_names()
            .into_iter()
            .map(|name| AssistantInfo {
                name: name.to_owned(),
                permission_modes: policy.permission_modes(name).into_iter().map(str::to_owned).collect(),
            })
            .collect(),
    })
}

//! GitHub REST replies (docs.github.com/rest): an issue comment
//! (`POST /repos/{owner}/{repo}/issues/{number}/comments`) or, for a pull request
//! review comment, a reply in its thread
//! (`POST /repos/{owner}/{repo}/pulls/{number}/comments/{comment_id}/replies`). Batch
//! reply mode by default: one comment when the turn ends; in stream mode the comment is
//! edited (`PATCH …/issues/comments/{id}` or `…/pulls/comments/{id}`).

use reqwest::Method;
use serde_json::{Value, json};

use super::{MessageApi, SinkError};
use crate::config::{GithubConfig, Secret};
use crate::http::{Answer, Http};
use crate::split::Unit;

/// GitHub's comment `body` limit, in characters.
pub const GITHUB_LIMIT: usize = 65_536;

/// The REST client of the GitHub sink.
#[derive(Debug, Clone)]
pub struct GithubApi {
    http: Http,
    api_base: String,
    token: Secret,
}

/// Where a GitHub reply goes.
#[derive(Debug, Clone)]
pub struct GithubTarget {
    repo: String,
    number: i64,
    review_comment: Option<i64>,
}

impl GithubApi {
    /// A client for `config`; `None` without a token.
    #[must_use]
    pub(crate) fn new(http: Http, config: &GithubConfig) -> Option<Self> {
        Some(Self { http, api_base: config.api_base.clone(), token: config.token.clone()? })
    }

    /// Sends `{"body": text}` to `path` with the token and GitHub's REST headers.
    async fn call(&self, what: &'static str, method: Method, path: &str, text: &str) -> Result<Answer, SinkError> {
        let url = format!("{}{path}", self.api_base);
        let body = json!({ "body": text });
        self.http
            .send(what, |c| {
                c.request(method.clone(), &url)
                    .bearer_auth(self.token.expose())
                    .header("accept", "application/vnd.github+json")
                    .header("x-github-api-version", "2022-11-28")
                    .json(&body)
            })
            .await?
            .success(what)
    }
}

impl MessageApi for GithubApi {
    type Target = GithubTarget;

    const NAME: &'static str = "github";
    const LIMIT: (usize, Unit) = (GITHUB_LIMIT, Unit::Chars);

    fn target(&self, rt: &Value) -> Result<GithubTarget, SinkError> {
        let repo = rt.get("repo").and_then(Value::as_str).filter(|r| r.contains('/'));
        let number = rt.get("number").and_then(Value::as_i64);
        let (Some(repo), Some(number)) = (repo, number) else {
            return Err(SinkError::Target("the GitHub reply target lacks repo or number".into()));
        };
        let review_comment = if rt.get("kind").and_then(Value::as_str) == Some("review_comment") {
            rt.get("comment_id").and_then(Value::as_i64)
        } else {
            None
        };
        Ok(GithubTarget { repo: repo.to_owned(), number, review_comment })
    }

    async fn post(&self, target: &GithubTarget, _index: usize, text: &str) -> Result<String, SinkError> {
        let answer = match target.review_comment {
            Some(comment) => {
                let path = format!("/repos/{}/pulls/{}/comments/{comment}/replies", target.repo, target.number);
                self.call("github reply to review comment", Method::POST, &path, text).await?
            }
            None => {
                let path = format!("/repos/{}/issues/{}/comments", target.repo, target.number);
                self.call("github create issue comment", Method::POST, &path, text).await?
            }
        };
        Ok(answer.body.get("id").map(Value::to_string).unwrap_or_default())
    }

    async fn edit(&self, target: &GithubTarget, id: &str, text: &str) -> Result<(), SinkError> {
        let path = match target.review_comment {
            Some(_) => format!("/repos/{}/pulls/comments/{id}", target.repo),
            None => format!("/repos/{}/issues/comments/{id}", target.repo),
        };
        self.call("github edit comment", Method::PATCH, &path, text).await.map(|_| ())
    }
}

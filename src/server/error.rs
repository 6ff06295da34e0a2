//! The API's one error type and the exhaustive mapping from library errors to HTTP status
//! codes. 4xx bodies say what was wrong; 5xx bodies stay generic and the detail goes to
//! the log with the request id.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::catalogue::CatalogueError;
use crate::store::StoreError;
use crate::Error;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(detail = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (the server log has the details)",
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        use StatusCode as S;
        let msg = e.to_string();
        match &e {
            // A request the API layer found well-formed (400 is its answer otherwise, see
            // server::api) that the store cannot carry out: a mask naming no layer of the
            // DNA's space, an uploaded DNA whose layers do not fit its space, an ambiguous
            // digest prefix. 422, as schema/openapi.json documents.
            Error::Format(_)
            | Error::Mask(_)
            | Error::Reference(_)
            | Error::RefName(_)
            | Error::Invalid(_) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid", msg),
            #[cfg(feature = "extract")]
            Error::Extract(_) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid", msg),
            Error::NotFound(_) => ApiError::new(S::NOT_FOUND, "not_found", msg),
            Error::SpaceMismatch(_) => ApiError::new(S::CONFLICT, "space_mismatch", msg),
            Error::Conflict(_) => ApiError::new(S::CONFLICT, "conflict", msg),
            Error::Store(StoreError::Missing(_)) => ApiError::new(S::NOT_FOUND, "not_found", msg),
            Error::Store(_) => ApiError::internal(msg),
            Error::Catalogue(CatalogueError::Busy(_)) => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "busy", "store busy, retry")
            }
            Error::Catalogue(_) => ApiError::internal(msg),
            Error::Io { .. } => ApiError::internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

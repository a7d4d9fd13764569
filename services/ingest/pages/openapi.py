"""What the OpenAPI document says of the link pages: their HTML answers and the forms they take."""

from __future__ import annotations

from typing import Any, Final

from lifecycle.events import EMAIL_CATEGORIES
from services.ingest.pages.texts import LANGS

OpenApiResponses = dict[int | str, dict[str, Any]]


def html_answer(description: str) -> dict[str, Any]:
    """An OpenAPI response that is one of these HTML pages."""
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


# Every answer of the pages, for their OpenAPI `responses=`.
SHOWN: Final[OpenApiResponses] = {200: html_answer("The page")}
REFUSED_LINK: Final[OpenApiResponses] = {
    400: html_answer("Garbled link (or, on a POST, a form that is not ours); nothing is recorded"),
    403: html_answer("Forged link, a link of another purpose, or one signed with a retired key"),
    429: html_answer("This address or this link was used too often; retry after Retry-After (bilingual page)"),
}
NOT_RECORDED: Final[OpenApiResponses] = {
    503: html_answer("Kafka or the customer store is unavailable; retry after Retry-After"),
}


def unsubscribe_form_doc() -> dict[str, Any]:
    """The `openapi_extra` of the one-click POST: its body is optional and says nothing the token does not."""
    return {
        "requestBody": {
            "required": False,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "List-Unsubscribe": {"type": "string", "enum": ["One-Click"]},
                            "lang": {"type": "string", "enum": list(LANGS)},
                        },
                    }
                }
            },
        }
    }


def preferences_form_doc() -> dict[str, Any]:
    """The `openapi_extra` of the preferences POST."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["action"],
                        "properties": {
                            "action": {
                                "type": "string",
                                "enum": ["save", "all"],
                                "description": "save: keep only the `receive` categories; all: unsubscribe",
                            },
                            "receive": {
                                "type": "array",
                                "items": {"type": "string", "enum": list(EMAIL_CATEGORIES)},
                                "description": "The categories to keep receiving; the others are left",
                            },
                            "lang": {"type": "string", "enum": list(LANGS)},
                        },
                    }
                }
            },
        }
    }

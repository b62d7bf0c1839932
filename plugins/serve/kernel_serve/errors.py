"""The one error the server's own checks raise; the app turns it into ``{"detail", "field"}`` JSON."""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP error naming the request field it is about (``None`` when it is about no field)."""

    def __init__(self, status: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers

    def body(self) -> dict:
        return {"detail": self.detail, "field": self.field}

"""The Label Studio server, through label-studio-sdk: find or create a project, import tasks, export annotations.

Every failure the user can fix (no server, no or a wrong token, a project that is missing) becomes a one-line
ConfigError. The token is read from the environment only (LABEL_STUDIO_API_KEY) and is never printed or written.
"""

from __future__ import annotations

import os

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from train.core.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8089"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
START_HINT = "start it with `make annotate-up` (it prints the URL and how to export LABEL_STUDIO_API_KEY)"


def server_url(url: str | None) -> str:
    return (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def reachable(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


class LabelStudioServer:
    """One server and its token; the methods the export and import need."""

    def __init__(self, url: str | None = None) -> None:
        self.url = server_url(url)
        if not reachable(self.url):
            raise ConfigError(f"no Label Studio answers at {self.url}: {START_HINT}, or pass url=<its address>")
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ConfigError(f"{TOKEN_ENV} is not set: {START_HINT}")
        self.client = LabelStudio(base_url=self.url, api_key=token, timeout=120, max_retries=0)
        self.call(lambda: self.client.projects.list(page_size=1).items, "list projects")

    def call(self, do, what: str):
        """do(), with the SDK's errors as one-line ConfigErrors."""
        try:
            return do()
        except ApiError as err:
            if err.status_code in (401, 403):
                raise ConfigError(f"Label Studio at {self.url} refused the token in {TOKEN_ENV} "
                                  f"({err.status_code}) to {what}: export the token `make annotate-up` printed "
                                  "(a legacy token needs the server started with "
                                  "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)") from None
            raise ConfigError(f"Label Studio at {self.url} could not {what}: HTTP {err.status_code} "
                              f"{str(err.body)[:200]}") from None
        except httpx.HTTPError as err:
            raise ConfigError(f"Label Studio at {self.url} stopped answering ({type(err).__name__}) while "
                              f"trying to {what}: {START_HINT}") from None

    def find_project(self, title: str):
        """The project with this exact title, or None (two with it: refused, as either could be meant)."""
        found = [p for p in self.call(lambda: list(self.client.projects.list(title=title)), "list projects")
                 if p.title == title]
        if len(found) > 1:
            raise ConfigError(f"Label Studio has {len(found)} projects titled {title!r}: rename all but one")
        return found[0] if found else None

    def project(self, title: str):
        found = self.find_project(title)
        if found is None:
            raise ConfigError(f"no Label Studio project titled {title!r} at {self.url}: check project=<title>")
        return self.call(lambda: self.client.projects.get(id=found.id), f"read project {title!r}")

    def create_project(self, title: str, label_config: str, instructions: str):
        return self.call(lambda: self.client.projects.create(
            title=title, label_config=label_config, expert_instruction=instructions, show_instruction=True,
            show_skip_button=True), f"create project {title!r}")

    def set_instructions(self, project_id: int, instructions: str) -> None:
        self.call(lambda: self.client.projects.update(id=project_id, expert_instruction=instructions,
                                                      show_instruction=True), "update the project's guidelines")

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project as Label Studio's JSON export writes it (data, annotations, drafts)."""
        return self.call(lambda: self.client.projects.exports.as_json(project_id), "export the project's tasks")

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        if not tasks:
            return 0
        reply = self.call(lambda: self.client.projects.import_tasks(id=project_id, request=tasks,
                                                                    return_task_ids=True), "import tasks")
        return int(getattr(reply, "task_count", None) or len(tasks))

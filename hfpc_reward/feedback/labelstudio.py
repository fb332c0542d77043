"""Label Studio for HFPC pass/fail labels: our labelling interface, tasks from picks, and a small REST client.

The interface shows the original and the generated image side by side with the background prompt, asks
pass or fail (hotkeys p / f) and, for a fail, which reasons (hotkeys 1-9, the HFPC failure taxonomy).
Images are served by Label Studio's local-files storage: the server runs with
`LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true` and `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=ROOT`, the
project gets a local storage on the pool's image folder (a sub-folder of ROOT), and a task's image is
`/data/local-files/?d=<path relative to ROOT>`. A picked image outside the pool's folder is refused.

The client talks to the REST API with `requests` (the `label-studio-sdk` package pulls pandas, nltk,
datamodel-code-generator and more into our environment for the six calls we need). It takes a legacy
API token ("Token ..." auth) or a personal access token (a JWT, exchanged at /api/token/refresh for a
short-lived "Bearer" access token).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hfpc_reward.errors import UsageError

logger = logging.getLogger(__name__)

VERDICTS = {"pass": 1, "fail": 0}  # the pass/fail choice -> HFPC label
PRODUCT_REASONS = (
    "product expanded",
    "product truncated",
    "product recoloured",
    "product label changed",
    "product moved",
)
BACKGROUND_REASONS = (
    "background inappropriate for the product",
    "background mismatched with the prompt",
    "background artefacts",
)
REASONS = (*PRODUCT_REASONS, *BACKGROUND_REASONS, "other")  # hotkeys 1-9 in this order
VERDICT_FIELD, REASONS_FIELD, NOTE_FIELD = "verdict", "reasons", "note"  # control tag names in the config
TIMEOUT_S = 60  # every request to the server (an export of a big project may take a while)


class LabelStudioError(UsageError):
    """The Label Studio server refused a request or cannot be reached; the message says what to check."""


def label_config() -> str:
    """The labelling interface (Label Studio XML config) for HFPC pass/fail with reasons."""
    reasons = "\n".join(
        f'      <Choice value="{reason}" hotkey="{k}"/>' for k, reason in enumerate(REASONS, start=1)
    )
    return f"""<View>
  <Header value="Does the generated background pass? (p = pass, f = fail; reasons 1-9)"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: flex; gap: 16px;">
    <View style="flex: 1;">
      <Header value="Original" size="4"/>
      <Image name="original" value="$original"/>
    </View>
    <View style="flex: 1;">
      <Header value="Generated" size="4"/>
      <Image name="generated" value="$generation"/>
    </View>
  </View>
  <Choices name="{VERDICT_FIELD}" toName="generated" choice="single-radio" required="true" showInline="true">
    <Choice value="pass" hotkey="p"/>
    <Choice value="fail" hotkey="f"/>
  </Choices>
  <View visibleWhen="choice-selected" whenTagName="{VERDICT_FIELD}" whenChoiceValue="fail">
    <Header value="Why does it fail? (product: 1-5, background: 6-8, other: 9)" size="5"/>
    <Choices name="{REASONS_FIELD}" toName="generated" choice="multiple" showInline="true">
{reasons}
    </Choices>
    <TextArea name="{NOTE_FIELD}" toName="generated" placeholder="other: what is wrong?" maxSubmissions="1"/>
  </View>
</View>"""


def local_file_url(
    path: str | os.PathLike, document_root: str | os.PathLike, images_root: str | os.PathLike
) -> str:
    """The URL Label Studio serves a local image under; refuses a path outside `images_root`."""
    real = Path(os.path.realpath(path))
    images, root = Path(os.path.realpath(images_root)), Path(os.path.realpath(document_root))
    if images not in real.parents:
        raise UsageError(f"{path} lies outside the pool's image folder {images_root}: not served")
    if not real.is_file():
        raise UsageError(f"{path} does not exist")
    return "/data/local-files/?d=" + quote(real.relative_to(root).as_posix())


def task_for_pick(pick: dict, document_root: str | os.PathLike, images_root: str | os.PathLike) -> dict:
    """A Label Studio task for one pick: the two image URLs, the prompt and the pick's identity."""
    return {
        "data": {
            "original": local_file_url(pick["origin"], document_root, images_root),
            "generation": local_file_url(pick["generation"], document_root, images_root),
            "prompt": pick.get("prompt") or "",
            "pair_id": pick["pair_id"],
            "hfpc_pick": {k: v for k, v in pick.items() if k != "label"},  # never show a known label
        }
    }


def check_images_root(document_root: str | os.PathLike, images_root: str | os.PathLike) -> None:
    """Label Studio serves only a storage folder strictly inside its document root: say so before pushing."""
    root, images = Path(os.path.realpath(document_root)), Path(os.path.realpath(images_root))
    if root not in images.parents:
        raise UsageError(
            f"the image folder {images_root} must be a sub-folder of the server's document root "
            f"{document_root} (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); pass --document-root as its parent"
        )


class LabelStudioClient:
    """The Label Studio REST calls the feedback loop needs: projects, storage, tasks, annotations, export."""

    def __init__(self, url: str, token: str, timeout_s: float = TIMEOUT_S):
        import requests

        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"Label Studio URL must start with http:// or https://, got {url!r}")
        if not token:
            raise LabelStudioError("no Label Studio token: pass --token or set LABEL_STUDIO_API_KEY")
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.session = requests.Session()
        if token.count(".") == 2:  # a personal access token (JWT refresh token): get an access token
            access = self._request("POST", "/api/token/refresh", json={"refresh": token})["access"]
            self.session.headers["Authorization"] = f"Bearer {access}"
        else:
            self.session.headers["Authorization"] = f"Token {token}"

    def _request(self, method: str, path: str, **kwargs) -> Any:
        import requests

        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio {method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json() if response.content else None

    def whoami(self) -> dict:
        return self._request("GET", "/api/current-user/whoami")

    def create_project(self, title: str, description: str = "") -> dict:
        return self._request(
            "POST",
            "/api/projects/",
            json={"title": title, "description": description, "label_config": label_config()},
        )

    def add_local_storage(self, project_id: int, images_root: str | os.PathLike) -> dict:
        """Let the project's tasks read images under `images_root` (no sync: tasks come from our picks);
        a storage the project already has on that folder is reused."""
        path = os.path.realpath(images_root)
        storages = self._request("GET", "/api/storages/localfiles/", params={"project": project_id})
        for storage in storages or []:
            if storage.get("path") == path:
                return storage
        body = {
            "project": project_id,
            "path": path,
            "title": "hfpc pool",
            "use_blob_urls": False,
        }
        return self._request("POST", "/api/storages/localfiles/", json=body)

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Import tasks; returns their ids, in order."""
        answer = self._request(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks
        )
        return list(answer.get("task_ids", []))

    def export(self, project_id: int) -> list[dict]:
        """Every task of the project with its annotations (the JSON export), unfinished ones too."""
        return self._request(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )

    def annotate(
        self, task_id: int, result: list[dict], lead_time: float = 0.0, cancelled: bool = False
    ) -> dict:
        """Submit an annotation as this client's user (what an annotator's Submit / Skip does)."""
        body = {"result": result, "lead_time": lead_time, "was_cancelled": cancelled}
        return self._request("POST", f"/api/tasks/{task_id}/annotations/", json=body)

    def user_emails(self) -> dict[int, str]:
        """User id -> email (exports name annotators by id)."""
        return {user["id"]: user["email"] for user in self._request("GET", "/api/users/")}

    def delete_task(self, task_id: int) -> None:
        self._request("DELETE", f"/api/tasks/{task_id}/")


def choices_result(verdict: str, reasons: Iterable[str] = ()) -> list[dict]:
    """An annotation result as the interface writes it: the verdict and, when given, the reasons."""
    result = [_choices(VERDICT_FIELD, [verdict])]
    reasons = list(reasons)
    if reasons:
        result.append(_choices(REASONS_FIELD, reasons))
    return result


def _choices(name: str, values: list[str]) -> dict:
    return {"from_name": name, "to_name": "generated", "type": "choices", "value": {"choices": values}}

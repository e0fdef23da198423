"""The consumer's journal of jobs it has not closed yet: recovery after a crash, a failed seat or a
contest. One JSON file per job in $MESH_HOME/jobs/, written durably (mesh.files) at every step
(opened, drawn, each signed result, a seat added), removed once the job is seen closed on-chain.

Each delivered answer is saved with its text: the consumer always keeps what it may pay for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from meshmarket.mesh import config
from meshmarket.mesh.errors import MeshError
from meshmarket.mesh.files import write_atomic
from meshmarket.mesh.market import ResultClaim
from meshmarket.mesh.protocol import Job


@dataclass
class PendingJob:
    job_id: bytes
    job: Job | None
    results: dict[int, ResultClaim] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "job_id": "0x" + self.job_id.hex(),
            "job": self.job.to_wire() if self.job is not None else None,
            "results": {str(i): {"output_hash": "0x" + r.output_hash.hex(), "token_count": r.token_count,
                                 "signature": "0x" + r.signature.hex()} for i, r in self.results.items()},
            "texts": {str(i): t for i, t in self.texts.items()},
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PendingJob:
        d = json.loads(text)
        job_id = bytes.fromhex(d["job_id"][2:])
        results = {int(i): ResultClaim(job_id, bytes.fromhex(r["output_hash"][2:]), int(r["token_count"]),
                                       bytes.fromhex(r["signature"][2:])) for i, r in d["results"].items()}
        return cls(job_id, Job.parse(d["job"]) if d["job"] else None, results,
                   {int(i): str(t) for i, t in d.get("texts", {}).items()})


class Journal:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or config.home() / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: bytes) -> Path:
        return self.root / f"0x{job_id.hex()}.json"

    def save(self, p: PendingJob) -> None:
        write_atomic(self._path(p.job_id), p.to_json(), mode=0o600)

    def remove(self, job_id: bytes) -> None:
        self._path(job_id).unlink(missing_ok=True)

    def pending(self) -> list[PendingJob]:
        out = []
        for path in sorted(self.root.glob("0x*.json")):
            try:
                out.append(PendingJob.from_json(path.read_text()))
            except (ValueError, KeyError, TypeError, MeshError):
                continue  # a damaged entry is skipped, not fatal; it stays for inspection
        return out

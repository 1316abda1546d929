"""deploy/kubernetes against the Kubernetes API schemas, offline (kubernetes-validate ships them).

Running them is tests/test_image.py's `podman kube play` test; Services, the HPA and the PDB
cannot run there, so this is where they are checked.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

KUBERNETES = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
# The oldest Kubernetes release still maintained when these were written; every field used
# here is stable (apps/v1, autoscaling/v2, policy/v1) from well before it.
VERSION = "1.32.0"
DOCS = [
    pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    for path in sorted(KUBERNETES.glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
]


@pytest.mark.parametrize("doc", DOCS)
def test_manifest_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_what_a_cluster_needs_is_there():
    kinds = sorted(p.values[0]["kind"] for p in DOCS)
    assert kinds == sorted(
        [
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "Secret",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
        ]
    )
    (service,) = [
        p.values[0]
        for p in DOCS
        if p.values[0]["kind"] == "Deployment" and p.values[0]["metadata"]["name"] == "heimdall"
    ]
    (container,) = service["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    redis_url = {e["name"]: e for e in container["env"]}["HEIMDALL_REDIS_URL"]
    assert redis_url["valueFrom"]["secretKeyRef"]["name"] == "heimdall-redis"


def test_an_invalid_manifest_is_refused():
    """The validator is not a rubber stamp: a misspelt field fails."""
    bad = {**DOCS[0].values[0], "spec": {**DOCS[0].values[0].get("spec", {}), "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)

"""Every kustomization under deploy/ renders, and every object is valid Kubernetes.

Rendering is the real kustomize (`kubectl kustomize`); validation is strict, against the
API's JSON schemas (kubernetes-validate, offline), for the oldest supported Kubernetes and the
newest one the package knows. The standalone examples (deploy/examples/*.yaml, applied one by
one with `kubectl apply -f`) are validated the same way.
"""

from __future__ import annotations

import pytest

from tests.support.kustomize import (
    DEPLOY,
    kustomizations,
    label,
    load_yaml,
    render,
    renderer,
    validate,
)

needs_kustomize = pytest.mark.skipif(renderer() is None,
                                     reason="needs kubectl (or kustomize) to render deploy/")
EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))


def test_deploy_has_the_kustomizations_the_docs_name():
    names = {label(p) for p in kustomizations()}
    assert {"deploy/base", "deploy/overlays/kubelet-dir", "deploy/overlays/tiers",
            "deploy/overlays/arm64", "deploy/overlays/amd64", "deploy/examples/seed/store",
            "deploy/examples/seed/serve", "e2e/cluster/overlay"} <= names


@needs_kustomize
@pytest.mark.parametrize("directory", kustomizations(), ids=label)
def test_kustomization_renders_valid_objects(directory):
    objects = render(directory)
    assert objects, f"{directory} renders nothing"
    problems = [problem for obj in objects for problem in validate(obj)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path):
    objects = load_yaml(path)
    assert objects
    problems = [problem for obj in objects for problem in validate(obj)]
    assert not problems, "\n".join(problems)


def test_validation_catches_a_bad_field():
    """The check is not vacuous: a misspelt field in a real manifest is an error."""
    node = [o for o in load_yaml(DEPLOY / "base" / "node.yaml") if o["kind"] == "DaemonSet"][0]
    node["spec"]["template"]["spec"]["containers"][0]["mountPropagaton"] = "Bidirectional"
    assert any("mountPropagaton" in problem for problem in validate(node))

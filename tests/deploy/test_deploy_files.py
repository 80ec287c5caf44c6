"""deploy/ files validate against Ray's own schemas and the installed Ray version."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _yaml(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def test_cluster_launcher_yaml_matches_rays_schema():
    schema = json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    config = _yaml("cluster.yaml")
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    broken = dict(config, max_workers="many")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_serve_config_matches_serve_schema_and_builds():
    from ray.serve.schema import ServeDeploySchema

    cfg = ServeDeploySchema.model_validate(_yaml("serve.yaml"))
    app = cfg.applications[0]
    assert app.import_path == "paal_ray.serve.app:deployment"
    # The import path resolves to a builder that returns a Serve application (nothing deployed here).
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    from paal_ray.serve.app import deployment

    assert isinstance(call_user_app_builder_with_args_if_necessary(deployment, app.args), Application)


def test_health_route():
    from fastapi.testclient import TestClient

    from paal_ray.serve.app import create_app

    assert TestClient(create_app("/w")).get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_kuberay_files_pin_the_installed_ray_and_a_gpu_worker_group(name):
    doc = _yaml(name)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu_groups
    if doc["kind"] == "RayJob":
        assert "jobs/run_al.py" in doc["spec"]["entrypoint"]
        from ray.runtime_env import RuntimeEnv

        RuntimeEnv(**yaml.safe_load(doc["spec"]["runtimeEnvYAML"]))


def test_runtime_env_and_dockerfile():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**_yaml("runtime_env.yaml"))
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    docker = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}" in docker and '".[gpu]"' in docker

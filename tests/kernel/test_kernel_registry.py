"""Registry: lazy discovery, broken-plugin isolation, duplicates, unknown names, KERNEL_PLUGINS."""

import subprocess
import sys
import warnings

import pytest

import kernel
from kernel.registry import ComponentNotFoundError, Entry, PluginLoadError, PluginWarning, Registry


def test_import_kernel_does_not_import_torch_or_plugins():
    code = (
        "import sys, kernel, kernel.registry, kernel.cli;"
        "from kernel.registry import get_registry; get_registry();"
        "bad=[m for m in sys.modules if m=='torch' or m.startswith('kernel_')];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_kernel_plugins_cli_does_not_import_torch():
    code = "import sys; from kernel.cli import main; main(['plugins', '--json']); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_resolution_is_lazy_and_cached(fake_plugin, use_registry, fake_entries):
    good, _ = fake_plugin
    registry = use_registry(fake_entries(good))
    assert good not in sys.modules  # discovery did not import plugin code
    cls = kernel.component("TinyModel")
    assert cls.__name__ == "TinyModel" and good in sys.modules
    assert kernel.component("TinyModel") is cls
    assert kernel.component("tiny").__name__ == "TinyPipeline"  # family alias
    assert registry.plugins["kernel-fake"].provides["kernel.components"] == sorted(
        ["TinyModel", "TinyScheduler", "TinyPipeline", "SecondPipeline"])


def test_broken_plugin_warns_once_and_others_keep_working(fake_plugin, use_registry, fake_entries):
    good, bad = fake_plugin
    entries = fake_entries(good) + [Entry("BrokenScheduler", "kernel.components", f"{bad}:X", "kernel-broken", "0.3")]
    registry = use_registry(entries)
    with pytest.warns(PluginWarning, match=r"kernel-broken 0\.3.*broken on purpose"):
        with pytest.raises(PluginLoadError, match="kernel-broken"):
            kernel.component("BrokenScheduler")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second failure does not warn again
        with pytest.raises(PluginLoadError):
            kernel.component("BrokenScheduler")
    assert kernel.component("TinyScheduler").__name__ == "TinyScheduler"
    assert registry.plugins["kernel-broken"].errors


def test_malformed_entry_point_is_reported_at_discovery(use_registry):
    with pytest.warns(PluginWarning, match="kernel-odd 2.0.*not 'module:attribute'"):
        registry = use_registry([Entry("Odd", "kernel.components", "not a reference!", "kernel-odd", "2.0")])
    assert not registry.has("Odd")
    assert registry.plugins["kernel-odd"].errors


def test_duplicate_names_warn_with_both_providers_and_resolve_deterministically(fake_plugin, use_registry):
    good, _ = fake_plugin
    a = Entry("TinyModel", "kernel.components", f"{good}:TinyModel", "zeta-plugin", "1")
    b = Entry("TinyModel", "kernel.components", f"{good}:TinyScheduler", "alpha-plugin", "2")
    for order in ([a, b], [b, a]):
        with pytest.warns(PluginWarning, match="alpha-plugin 2 and zeta-plugin 1"):
            registry = use_registry(order)
        assert registry.entry("TinyModel").dist == "alpha-plugin"


def test_unknown_name_lists_close_matches_and_install_hint(fake_plugin, use_registry, fake_entries):
    good, _ = fake_plugin
    use_registry(fake_entries(good))
    with pytest.raises(ComponentNotFoundError, match="Close matches: TinyModel"):
        kernel.component("TinyModle")
    with pytest.raises(ComponentNotFoundError, match="pip install kernel-sched-euler"):
        kernel.component("EulerDiscreteScheduler")
    with pytest.raises(ValueError):  # also a ValueError for callers that catch that
        kernel.component("Nothing")


def test_kernel_plugins_env_restricts(fake_plugin, fake_entries, monkeypatch):
    good, _ = fake_plugin
    entries = fake_entries(good) + [Entry("Other", "kernel.components", f"{good}:TinyModel", "kernel-other", "1")]
    monkeypatch.setenv("KERNEL_PLUGINS", "kernel-other")
    registry = Registry(entries=entries)
    assert registry.names() == ["Other"]
    monkeypatch.setenv("KERNEL_PLUGINS", "")
    registry = Registry(entries=entries)
    assert registry.names() == [] and registry.plugins == {}
    with pytest.raises(ComponentNotFoundError, match="KERNEL_PLUGINS"):
        registry.resolve("TinyModel")


def test_real_entry_points_scan_finds_installed_plugins():
    registry = Registry(allowed=None)
    for name in registry.names():
        entry = registry.entry(name)
        assert ":" in entry.value and entry.dist


def test_plugins_cli_json(monkeypatch, capsys):
    import json

    from kernel.cli import main

    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list)
    for plugin in data:
        assert {"name", "version", "provides", "errors"} <= set(plugin)


def test_hooks_are_loaded_lazily(fake_plugin, use_registry, tmp_path):
    hook_module = tmp_path / "kernel_fake_hooks_mod.py"
    hook_module.write_text(
        "from kernel.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def kernel_check_fits(family, model_index):\n"
        "    return None if 'unet' in model_index else 'tiny needs a unet'\n"
    )
    registry = use_registry([Entry("tinyhooks", "kernel.hooks", "kernel_fake_hooks_mod", "kernel-fake", "1")])
    assert "kernel_fake_hooks_mod" not in sys.modules
    assert registry.hook.kernel_check_fits(family="tiny", model_index={"unet": ["x", "y"]}) == []
    assert registry.hook.kernel_check_fits(family="tiny", model_index={}) == ["tiny needs a unet"]
    sys.modules.pop("kernel_fake_hooks_mod", None)


def test_kind_of_tells_components_apart(fake_plugin, use_registry, fake_entries):
    from kernel.protocols import kind_of

    good, _ = fake_plugin
    use_registry(fake_entries(good))
    Model, Sched, Pipe = (kernel.component(n) for n in ("TinyModel", "TinyScheduler", "TinyPipeline"))
    # The kind is what a class declares (SchedulerMixin and the pipeline base declare theirs) ...
    assert kind_of(Sched) == "scheduler" and kind_of(Sched()) == "scheduler"
    assert kind_of(Pipe) == "pipeline"
    # ... never a guess from its members: TinyModel has a denoiser's members but declares nothing.
    assert kind_of(Model) is None and kind_of(Model()) is None

    class Denoiser(Model):
        component_kind = "denoiser"

    assert kind_of(Denoiser) == "denoiser" and kind_of(Denoiser()) == "denoiser"
    assert kind_of(int) is None and kind_of(3) is None

    class Misdeclared:
        component_kind = "sampler"

    with pytest.raises(ValueError, match="component_kind='sampler'.*scheduler"):
        kind_of(Misdeclared)

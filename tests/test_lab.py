"""JupyterLab as its users meet it: `make lab`'s own command serves a copy of the notebooks, headless
Chromium opens a stage notebook, runs all its cells from the Run menu on the project's environment and
saves it with Ctrl+S. The saved notebook holds the outputs; nbdev_clean then leaves nothing else behind
(no execution counts, no metadata), and once the outputs are cleared in Lab too the cleaned notebook
is byte for byte the committed one.

Slow tier: one JupyterLab process, one notebook (about a minute on two busy cores)."""
import json
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import BIN, ROOT, clean_environ, free_port

NOTEBOOK = "03_clean.ipynb"  # a stage notebook that runs standalone, on a small slice, in seconds
PRINTED = re.compile(r"\d+ features; train [\d,]+, valid [\d,]+, test [\d,]+ rows")  # what its stage cell prints
DEFAULT_KERNEL = "mlops_nb"  # the kernel `make venv` installs, "Python (mlops_nb)"


def lab_command(target:Path, port:int, token:str) -> list[str]:
    "The command `make lab` runs (read with `make -n`, the environment taken as built), serving `target` on `port`."
    extra = f"--no-browser --allow-root --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "lab", f"NB={target}", f"LAB_PORT={port}",
                          f"LAB_ARGS={extra}"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    [line] = [l for l in dry.stdout.splitlines() if "jupyter lab" in l]
    return shlex.split(line)


def wait_for(condition, timeout:float, what, alive=None, interval:float=0.5):
    "`condition()`'s first true value within `timeout` seconds; else the test fails saying what it waited for (`what`, or `what()` then)."
    deadline = time.monotonic() + timeout
    while True:
        if alive: alive()
        value = condition()
        if value: return value
        if time.monotonic() > deadline: pytest.fail(f"waited {timeout:g} s for {what() if callable(what) else what}")
        time.sleep(interval)


@pytest.fixture
def lab(tmp_path):
    "JupyterLab started by `make lab`'s command on a copy of nbs/ and settings.ini, opening NOTEBOOK: url, token, the copy's folder, a check that Lab still runs, its environment."
    home = tmp_path/"project"
    shutil.copytree(ROOT/"nbs", home/"nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_proc", "__pycache__"))
    shutil.copy(ROOT/"settings.ini", home)
    jupyter = tmp_path/"jupyter"  # no setting, workspace or notebook signature of the user's: Lab's defaults
    env = clean_environ(OMP_WAIT_POLICY="PASSIVE", TMPDIR=str(_mkdir(tmp_path/"tmp")),  # the kernel's standalone run writes under TMPDIR
                        JUPYTER_CONFIG_DIR=str(_mkdir(jupyter/"config")), JUPYTER_DATA_DIR=str(_mkdir(jupyter/"data")),
                        JUPYTER_RUNTIME_DIR=str(_mkdir(jupyter/"runtime")), JUPYTERLAB_SETTINGS_DIR=str(_mkdir(jupyter/"settings")),
                        JUPYTERLAB_WORKSPACES_DIR=str(_mkdir(jupyter/"workspaces")))
    port, token = free_port(), secrets.token_hex(16)
    command = lab_command(home/"nbs"/NOTEBOOK, port, token)
    log = tmp_path/"lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def alive():
        if proc.poll() is not None: pytest.fail(f"JupyterLab exited ({proc.returncode}): {log.read_text()[-3000:]}")

    try:
        def ready():
            try: return httpx.get(f"{url}/api/status", params={"token": token}, timeout=5).status_code == 200
            except httpx.TransportError: return False
        wait_for(ready, 180, "JupyterLab to answer", alive)
        yield url, token, home, alive, env
    finally:
        kernels = [p for p in psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()
            pytest.fail(f"JupyterLab did not stop within 60 s of SIGTERM: {log.read_text()[-3000:]}")
        left = [p.pid for p in kernels if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"JupyterLab left its kernels running: {left}"


def _mkdir(path:Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# The notebook's state as the page shows it: its kernel's name and status, its code cells' prompts and its outputs' text
PAGE_STATE = """
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
if (!panel) return null;
const text = s => { const e = panel.querySelector(s); return e ? e.textContent.trim() : null; };
return {kernel: text('.jp-Toolbar-kernelName'),
        status: (panel.querySelector('.jp-Notebook-ExecutionIndicator') || {}).getAttribute?.('data-status') ?? null,
        prompts: [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim()),
        outputs: [...panel.querySelectorAll('.jp-OutputArea-output')].map(o => o.textContent).join('\\n'),
        errors: [...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map(o => o.textContent)};
"""


def menu(browser, label:str, entry:str):
    "Click menu `label` in Lab's menu bar, then its item `entry`, as a user does."
    from selenium.webdriver.common.by import By
    [item] = [m for m in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if m.text.strip() == label]
    item.click()
    found = wait_for(lambda: [e for e in browser.find_elements(By.CSS_SELECTOR, ".lm-Menu-item") if e.is_displayed()
                              and e.find_element(By.CSS_SELECTOR, ".lm-Menu-itemLabel").text.strip() == entry], 30, f"{label} > {entry} in the menu")
    found[0].click()


def save(browser):
    "Ctrl+S, as a user saves."
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()


def read_notebook(path:Path) -> dict|None:
    "The notebook's JSON; None while it is being written."
    try: return json.loads(path.read_bytes())
    except ValueError: return None


def nbdev_clean(path:Path, env:dict) -> bytes:
    "`path` after nbdev_clean, run in the copy's project (its settings.ini)."
    done = subprocess.run([str(BIN/"nbdev_clean"), "--fname", str(path)], cwd=path.parent.parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    return path.read_bytes()


@pytest.mark.slow
def test_lab_runs_and_saves_a_stage_notebook(lab, browser, tmp_path):
    url, token, home, alive, env = lab
    on_disk = home/"nbs"/NOTEBOOK
    committed = on_disk.read_bytes()  # the checkout's notebook, as copied (Lab writes it only when told to save)
    code_cells = sum(c["cell_type"] == "code" for c in json.loads(committed)["cells"])
    api = lambda path: httpx.get(f"{url}{path}", params={"token": token}, timeout=10).json()

    # the kernel: `make lab`'s default is the project's; the notebook runs on the kernel its metadata names, in the project's environment
    specs = api("/api/kernelspecs")
    assert DEFAULT_KERNEL in specs["kernelspecs"], f"no kernel {DEFAULT_KERNEL!r} (make venv installs it): {sorted(specs['kernelspecs'])}"
    assert specs["default"] == DEFAULT_KERNEL and specs["kernelspecs"][DEFAULT_KERNEL]["spec"]["display_name"] == "Python (mlops_nb)"
    named = json.loads(committed)["metadata"]["kernelspec"]["name"]
    assert named == DEFAULT_KERNEL, f"{NOTEBOOK} names kernel {named!r}: the project's notebooks open on {DEFAULT_KERNEL!r}"
    assert named in specs["kernelspecs"], f"{NOTEBOOK} names kernel {named!r}, which this Lab does not offer: {sorted(specs['kernelspecs'])}"
    spec = specs["kernelspecs"][named]["spec"]
    program = spec["argv"][0]  # jupyter_client runs a bare "python" with the server's own interpreter: the environment's
    assert program in ("python", "python3") or Path(program).parent == BIN, f"kernel {named} runs {program}, not the project's environment"

    shot = tmp_path/f"lab_{Path(NOTEBOOK).stem}.png"
    try:
        browser.get(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        state = lambda: browser.execute_script(PAGE_STATE)
        ready = wait_for(lambda: (s := state()) and s["kernel"] == spec["display_name"] and s["status"] == "idle" and len(s["prompts"]) == code_cells and s,
                         240, lambda: f"{NOTEBOOK} open in Lab with kernel {spec['display_name']!r} idle (page: {state()})", alive)
        assert not any(re.fullmatch(r"\[\d+\]:", p) for p in ready["prompts"]) and not ready["outputs"].strip()  # nothing ran yet
        [session] = api("/api/sessions")
        assert session["path"] == NOTEBOOK and session["kernel"]["name"] == named

        menu(browser, "Run", "Run All Cells")
        finished = wait_for(lambda: (s := state()) and (all(re.fullmatch(r"\[\d+\]:", p) for p in s["prompts"])
                                                       or (s["status"] == "idle" and "[*]:" not in s["prompts"] and s["errors"])) and s,
                            600, lambda: f"every cell of {NOTEBOOK} to run (page: {state()})", alive)
        browser.execute_script("[...document.querySelectorAll('.jp-OutputArea-output')].find(o => /features; train/.test(o.textContent))"
                               "?.scrollIntoView({block: 'center'})")  # the stage's line and the kernel's name, in one picture
        browser.save_screenshot(str(shot))
        print(f"screenshot of the Lab page: {shot}")
        counts = [int(p[1:-2]) for p in finished["prompts"] if re.fullmatch(r"\[\d+\]:", p)]
        assert counts == list(range(1, code_cells + 1)), (finished["prompts"], finished["errors"])
        assert PRINTED.search(finished["outputs"]), finished["outputs"][-2000:]
        assert state()["kernel"] == spec["display_name"]  # still the same kernel

        # Ctrl+S: the notebook on disk holds the run's counts and outputs
        save(browser)
        def saved():
            nb = read_notebook(on_disk)
            return nb if nb and all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code") else None
        nb = wait_for(saved, 60, f"{NOTEBOOK} saved with its execution counts", alive)
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert PRINTED.search("".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", [])))
        assert nb["metadata"]["kernelspec"]["name"] == named

        # nbdev_clean leaves the outputs (settings.ini: clear_all = False keeps cells' tags) and nothing else of the run
        ran = tmp_path/"ran"/"nbs"/NOTEBOOK  # a copy beside the same settings.ini
        _mkdir(ran.parent); shutil.copy(home/"settings.ini", ran.parent.parent); shutil.copy(on_disk, ran)
        cleaned = json.loads(nbdev_clean(ran, env))
        for cell in cleaned["cells"]:
            if cell["cell_type"] == "code":
                assert all(o.get("execution_count") is None for o in cell["outputs"])
                cell["outputs"] = []
        assert cleaned == json.loads(committed)

        # cleared in Lab (Edit > Clear Outputs of All Cells) and saved, then cleaned: byte for byte the committed notebook
        menu(browser, "Edit", "Clear Outputs of All Cells")
        wait_for(lambda: not state()["outputs"].strip(), 60, "the outputs to be cleared in the page", alive)
        save(browser)
        wait_for(lambda: (nb := read_notebook(on_disk)) and not any(c.get("outputs") for c in nb["cells"]), 60, f"{NOTEBOOK} saved without outputs", alive)
        assert nbdev_clean(on_disk, env) == committed
    except BaseException:
        browser.save_screenshot(str(shot.with_name(shot.stem + "_failed.png")))
        print(f"screenshot of the Lab page when the test failed: {shot.with_name(shot.stem + '_failed.png')}")
        raise

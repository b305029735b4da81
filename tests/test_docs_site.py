"""The documentation site as its readers meet it: `mlops_docs` after the session's run, a served prediction
and a monitoring report, rendered by nbdev with Quarto, then every page opened in headless Chromium."""
import shutil
import subprocess
import time
from urllib.parse import urldefrag

import httpx
import pytest

from conftest import BIN, EXAMPLE, cli, free_port
from mlops_nb.docs import external_resources, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs_site(project, trained, tmp_path_factory):
    "The site `mlops_docs` builds after the session's run, twenty served predictions and a monitoring report; its folder and build time."
    if not shutil.which("quarto"): pytest.fail("Quarto is not installed: `make docs` needs it (.ci/run installs it)")
    home, env = project
    port = free_port()
    server = subprocess.Popen([str(BIN/"mlops_serve"), "--port", str(port)], cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200: break
            except httpx.TransportError: pass
            time.sleep(0.5)
        assert httpx.post(f"{url}/predict", json={"rows": EXAMPLE["rows"]*20}, timeout=10).status_code == 200
    finally:
        server.terminate(); server.wait(timeout=60)
    assert cli(project, "mlops_monitor").returncode in (0, 3)  # a report in state/monitor
    site = tmp_path_factory.mktemp("docs")/"site"
    started = time.perf_counter()
    result = cli(project, "mlops_docs", "--dest", str(site))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    print(f"\n{result.stdout.strip().splitlines()[-1]} (measured {time.perf_counter() - started:.0f} s)")
    return site


def test_every_page_loads_from_loopback_with_its_links_and_images(docs_site, browser, tmp_path_factory):
    "Every page: nothing fetched from another host, no internal link broken, every image shown, and its screenshot kept."
    pages = sorted(str(p.relative_to(docs_site)) for p in docs_site.rglob("*.html") if "site_libs" not in p.parts)
    for required in ["index.html", "clean.html", "serve.html", "monitor.html", "guides/quick_start.html", "run/latest.html",
                     "run/model_card.html", "run/monitoring.html", "run/monitoring_report.html", "run/benchmarks.html"]:
        assert required in pages, pages
    assert not external_resources(docs_site)
    shots = tmp_path_factory.mktemp("screenshots")
    broken, foreign, missing_images = [], [], []
    with served(docs_site) as base:
        for page in pages:
            browser.get(base + page)
            assert browser.execute_script("return document.readyState") == "complete"
            foreign += [f"{page}: {u}" for u in browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
                        if not u.startswith(base)]
            missing_images += [f"{page}: {src}" for src in browser.execute_script(
                "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")]
            for href in browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)"):
                target = urldefrag(href)[0].split("?")[0]
                if target.startswith(base) and not (docs_site/(target[len(base):] or "index.html")).exists(): broken.append(f"{page} -> {href}")
            assert browser.save_screenshot(str(shots/(page.replace("/", "__") + ".png")))
    print(f"\n{len(pages)} pages opened; screenshots in {shots}")
    assert not foreign, foreign[:10]
    assert not broken, broken[:10]
    assert not missing_images, missing_images[:10]


def test_sidebar_reaches_every_stage_guide_and_run_page(docs_site, browser):
    with served(docs_site) as base:
        browser.get(base + "index.html")
        linked = {urldefrag(h)[0][len(base):] for h in browser.execute_script("return [...document.querySelectorAll('#quarto-sidebar a[href]')].map(a => a.href)")}
    for page in ["ingest.html", "eda.html", "clean.html", "tune.html", "evaluate.html", "serve.html", "monitor.html", "pipeline.html",
                 "guides/own_data.html", "run/latest.html", "run/model_card.html", "run/monitoring.html", "registry.html"]:
        assert page in linked, sorted(linked)


def test_search_works_offline(docs_site, browser):
    "The search box finds a word of a notebook's prose, from the site's own index, and its results lead to the page."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    with served(docs_site) as base:
        browser.get(base + "index.html")
        browser.find_element(By.CSS_SELECTOR, ".aa-DetachedSearchButton, .aa-Autocomplete input").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, ".aa-Input")).send_keys("wasserstein")
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".aa-Item a"))
        found = browser.execute_script("return [...document.querySelectorAll('.aa-Item a')].map(a => a.href)")
        assert any("drift.html" in h for h in found), found
        browser.get(next(h for h in found if "drift.html" in h))
        assert "Wasserstein" in browser.find_element(By.TAG_NAME, "body").text


def test_api_reference_is_rendered_from_the_exported_code(docs_site, browser):
    "nbdev's show_doc: an exported function's signature and docstring are on its notebook's page."
    from selenium.webdriver.common.by import By
    with served(docs_site) as base:
        browser.get(base + "registry.html")
        text = browser.find_element(By.TAG_NAME, "body").text
    assert "load_bundle" in text and "champion_version" in text
    assert "#| export" not in text and "nbdev_export" not in text  # directives and the export call are not shown


def test_model_card_and_monitoring_report_of_the_latest_run(docs_site, browser, trained):
    from selenium.webdriver.common.by import By
    with served(docs_site) as base:
        browser.get(base + "run/model_card.html")
        card = browser.find_element(By.TAG_NAME, "body").text
        assert f"v{trained['champion']}" in card and "Intended use" in card
        browser.get(base + "run/latest.html")
        assert trained["run_id"] in browser.find_element(By.TAG_NAME, "body").text
        browser.get(base + "run/monitoring.html")
        assert "drift detected" in browser.find_element(By.TAG_NAME, "body").text
        browser.find_element(By.LINK_TEXT, "monitoring_report.html").click()  # the whole executed report, as mlops_monitor wrote it
        report = browser.find_element(By.TAG_NAME, "body").text
        assert "Drift and performance" in report and "Feature drift over time" not in report  # prose and figures, not code
        assert browser.execute_script("return [...document.images].filter(i => i.naturalWidth > 0).length") >= 3


@pytest.fixture
def writers_copy(tmp_path):
    "A copy of the project's notebooks, settings.ini and package, as a writer's checkout: nbdev_preview writes beside them."
    from conftest import ROOT
    for name in ("nbs", "mlops_nb"): shutil.copytree(ROOT/name, tmp_path/name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ("settings.ini", "_quarto.yml"): shutil.copy(ROOT/name, tmp_path/name)
    return tmp_path


def saved_as_lab_saves(folder, name, nb):
    "Save notebook `nb` as `folder/name` the way JupyterLab's Save does: through Jupyter's contents manager (atomic writing)."
    from jupyter_server.services.contents.filemanager import FileContentsManager
    FileContentsManager(root_dir=str(folder)).save({"type": "notebook", "format": "json", "content": nb}, name)


def test_preview_shows_a_notebook_edit(writers_copy):
    "`make preview` (nbdev_preview) serves the site from the notebooks and renders a notebook again when it is saved."
    import nbformat
    from conftest import clean_environ
    port = free_port()
    log = writers_copy/"preview.log"
    output = open(log, "w")  # a file, not a pipe: nobody reads it while the preview runs, and a full pipe would stall it
    preview = subprocess.Popen([str(BIN/"nbdev_preview"), "--port", str(port), "--no_browser"], cwd=writers_copy, env=clean_environ(),
                               stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    def page(path):
        try: return httpx.get(f"http://127.0.0.1:{port}/{path}", timeout=5).text
        except httpx.TransportError: return ""
    def wait_for(check, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            assert preview.poll() is None, log.read_text()[-3000:]
            if check(): return True
            time.sleep(1)
        return False
    try:
        assert wait_for(lambda: "Clean" in page("clean.html"), 900), "nbdev_preview did not serve clean.html"
        assert "Ingest" in page("ingest.html") and "mlops_nb" in page("index.html")
        nb = nbformat.read(writers_copy/"nbs"/"03_clean.ipynb", as_version=4)
        nb.cells.insert(2, nbformat.v4.new_markdown_cell("A sentence a writer has just added."))
        saved_as_lab_saves(writers_copy/"nbs", "03_clean.ipynb", nb)
        assert wait_for(lambda: "A sentence a writer has just added." in page("clean.html"), 300), \
            f"the edit never reached the page:\n{log.read_text()[-3000:]}"
    finally:
        import os, signal
        os.killpg(preview.pid, signal.SIGTERM)
        preview.wait(timeout=60)
        output.close()

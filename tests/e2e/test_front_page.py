"""End-to-end: the front's profile page in a real browser (issue 18, step 6).

Debian's chromium, headless, driven by chromedriver through python3-selenium, against a
front before a real docker-registry (htpasswd users admin, alice). The page is served by
the front with nothing from elsewhere; wrong credentials are refused on the page (the
browser asks nothing itself); the admin registers region-us and region-eu with the form
and removes one with its button; alice, no admin, sees no admin section, chooses
region-us and then none; every change is read back through the API.

Set CC_FRONT_SCREENSHOT=PATH to keep the screenshot of alice's profile (the README's
picture is made so). Skipped, with the reason, when chromium, chromedriver or
python3-selenium are missing (scripts/install-deps.sh installs them).

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_front_page.py
"""

import os
import re
import secrets
import shutil
import sys

# python3-selenium is Debian's: a python3 of its own (pyenv, a venv) may not see it.
try:
    import selenium  # noqa: F401
except ImportError:
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system) \
            and not os.environ.get("CC_FRONT_PAGE_REEXEC"):
        os.environ["CC_FRONT_PAGE_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_front import api, front  # noqa: E402

PASSWORDS = {u: "%s-pw-%s" % (u, secrets.token_hex(8)) for u in ("admin", "alice")}
CREDS = {u: (u, p) for u, p in PASSWORDS.items()}


class Browser:
    """Headless chromium through chromedriver, stopped by quit() and, if that fails, by
    the PID of the driver's process."""

    def __init__(self, work):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=960,660", "--no-first-run",
                    "--user-data-dir=%s" % work.sub("chromium-profile", mkdir=True)):
            opts.add_argument(arg)
        self.service = Service(shutil.which("chromedriver"),
                               log_path=work.sub("chromedriver.log"))
        self.driver = webdriver.Chrome(service=self.service, options=opts)
        self.driver.set_page_load_timeout(h.HTTP_TIMEOUT)
        self.driver.set_script_timeout(h.HTTP_TIMEOUT)

    def quit(self):
        try:
            self.driver.quit()
        finally:
            proc = getattr(self.service, "process", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(h.STOP_TIMEOUT)

    def wait(self, cond, what):
        from selenium.webdriver.support.ui import WebDriverWait
        return WebDriverWait(self.driver, h.HTTP_TIMEOUT, poll_frequency=h.POLL).until(
            lambda d: cond(), "the page to show " + what)

    def el(self, id_):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.ID, id_)

    def visible(self, id_):
        return self.el(id_).is_displayed()

    def sign_in(self, user, password):
        self.el("username").clear()
        self.el("username").send_keys(user)
        self.el("password").send_keys(password)
        self.el("signin-button").click()


def body(run):
    missing = [t for t in ("chromium", "chromedriver") if shutil.which(t) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("python3-selenium")
    if missing:
        run.skip("the profile page in a browser", "not installed: %s (scripts/install-deps.sh "
                 "installs them)" % ", ".join(missing))
        return
    work = run.work
    origin = run.origin(users=PASSWORDS)
    f = front(run, origin)
    b = Browser(work)
    try:
        scenario(run, work, f, b)
    finally:
        b.quit()


def scenario(run, work, f, b):
    def served_alone():
        r = h.request(f.port, "GET", "/")
        expect_eq(r.status, 200, "GET /")
        expect(r.header("Content-Type").startswith("text/html"), "an HTML page")
        expect("default-src 'none'" in r.header("Content-Security-Policy", ""), "a strict CSP")
        page = r.body.decode()
        refs = re.findall(r'(?:src|href)="([^"]+)"', page)
        expect_eq(sorted(refs), ["/ui/app.css", "/ui/app.js"], "what the page loads")
        for path in refs:
            expect_eq(h.request(f.port, "GET", path).status, 200, "GET " + path)
        script = h.request(f.port, "GET", "/ui/app.js").body.decode()
        shown = re.sub(r'placeholder="[^"]*"', "", page)  # an example host, as text
        expect(not re.search(r"https?://", shown + script),
               "no external address in the page or its script")

    run.check("the page and its two files come from the front, nothing from elsewhere",
              served_alone)

    def refused():
        b.driver.get(f.url + "/")
        b.wait(lambda: b.visible("signin"), "the sign-in form")
        b.sign_in("admin", "not-the-password")
        b.wait(lambda: "refused" in b.el("error").text, "the refusal")
        expect(b.visible("signin") and not b.visible("profile"), "still signed out")

    run.check("wrong credentials are refused on the page", refused)

    def admin_registers():
        b.driver.get(f.url + "/")
        b.sign_in(*CREDS["admin"])
        b.wait(lambda: b.visible("admin"), "the admin section")
        expect_eq(b.el("user-name").text, "admin (admin)", "who is signed in")
        for name, port in (("region-us", 5101), ("region-eu", 5102)):
            b.el("cache-name").send_keys(name)
            b.el("cache-host").send_keys("http://127.0.0.1:%d" % port)
            b.el("register").click()
            b.wait(lambda name=name: name in b.el("cache-rows").text, "%s in the table" % name)
        got = api(f.port, "GET", "/api/v0/content_caches", creds=CREDS["alice"]).json()
        expect_eq([c["name"] for c in got], ["region-us", "region-eu"], "the caches, by the API")
        b.el("remove-region-eu").click()
        b.wait(lambda: "region-eu" not in b.el("cache-rows").text, "region-eu removed")
        got = api(f.port, "GET", "/api/v0/content_caches", creds=CREDS["alice"]).json()
        expect_eq([c["name"] for c in got], ["region-us"], "the caches after the removal")
        b.el("cache-name").send_keys("region-eu")
        b.el("cache-host").send_keys("http://127.0.0.1:5103")
        b.el("register").click()
        b.wait(lambda: "region-eu" in b.el("cache-rows").text, "region-eu again")
        b.el("signout").click()
        b.wait(lambda: b.visible("signin"), "the sign-in form again")

    run.check("the admin registers two caches with the form and removes one", admin_registers)

    def alice_chooses():
        b.sign_in(*CREDS["alice"])
        b.wait(lambda: b.visible("profile"), "alice's profile")
        expect(not b.visible("admin"), "no admin section for alice")
        expect(b.el("choice-none").is_selected(), "no cache chosen yet")
        b.el("choice-region-us").click()
        b.el("save").click()
        b.wait(lambda: b.el("saved").text == "Saved: region-us.", "the saved choice")
        r = api(f.port, "GET", "/api/v0/accounts/alice/settings", creds=CREDS["alice"])
        expect_eq(r.json(), {"contentCache": "region-us"}, "alice's choice, by the API")
        path = work.sub("front-profile.png")
        b.driver.save_screenshot(path)
        keep = os.environ.get("CC_FRONT_SCREENSHOT")
        if keep:
            shutil.copyfile(path, keep)
            h.log("  screenshot kept in %s" % keep)
        b.el("choice-none").click()
        b.el("save").click()
        b.wait(lambda: b.el("saved").text == "Saved: no cache.", "no cache saved")
        r = api(f.port, "GET", "/api/v0/accounts/alice/settings", creds=CREDS["alice"])
        expect_eq(r.json(), {"contentCache": None}, "alice's choice after none")

    run.check("alice (no admin) chooses region-us, then none; the API agrees", alice_chooses)


if __name__ == "__main__":
    h.main("front_page", body)

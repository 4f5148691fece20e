"""Every nginx and Apache configuration block in the docs passes `nginx -t` / `apache2 -t` with the module.

Blocks are the fenced blocks of README.md, docs/nginx.md, docs/apache.md, docs/migrating.md and
docs/monitoring.md, plus the packaged debian/conf/acme.conf and mod-http-acme.conf. A fence tagged `nginx` or
`apache` is a configuration and is tested; a fence tagged with another language (sh, text, json, console,
yaml) is not; an untagged or unknown fence fails the test, so that no configuration is skipped silently.

Adapted mechanically, nothing else:
  - CA URLs (`uri`, `ACMECertificateAuthority`) become a local dummy URL (nothing contacts it at -t);
  - absolute paths (/etc, /var, /path/to/repo ...) move under a temp root, where dummy files of the kind the
    directive wants are created (a PEM certificate, a key, a 32-byte storage key, a directory);
  - Redis hosts become 127.0.0.1;
  - a fragment is wrapped in the context its directives need (acme_issuer, server, location / a
    <VirtualHost> with SSLEngine on), and issuers it names are declared.
"""

import base64
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

import harness
from harness import REPO_ROOT, openssl, run_cmd

NGINX_BIN = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
APACHE_BIN = os.environ.get("APACHE_BIN", "/usr/sbin/apache2")
APACHE_MODULES = Path(os.environ.get("APACHE_MODULES", "/usr/lib/apache2/modules"))

DOCS = ["README.md", "docs/nginx.md", "docs/apache.md", "docs/migrating.md", "docs/monitoring.md"]
PACKAGED = {"debian/conf/acme.conf": "apache", "debian/conf/mod-http-acme.conf": "nginx"}
CONFIG_TAGS = {"nginx", "apache"}
OTHER_TAGS = {"sh", "text", "json", "console", "yaml"}
DUMMY_CA = "https://127.0.0.1:9/dir"

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
CLOSE = re.compile(r"^\s*```\s*$")


class Block:
    def __init__(self, path, line, tag, text):
        self.path, self.line, self.tag, self.text = path, line, tag, text

    @property
    def id(self):
        return f"{self.path}:{self.line}"


def fenced_blocks(rel):
    lines = (REPO_ROOT / rel).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, tag = m.group(1), m.group(2)
        j, body = i + 1, []
        while j < len(lines) and not CLOSE.match(lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append(Block(rel, i + 1, tag, "\n".join(body) + "\n"))
        i = j + 1
    return out


def all_blocks():
    out = []
    for rel in DOCS:
        out += fenced_blocks(rel)
    for rel, tag in PACKAGED.items():
        out.append(Block(rel, 1, tag, (REPO_ROOT / rel).read_text()))
    return out


BLOCKS = all_blocks()
CONFIGS = [b for b in BLOCKS if b.tag in CONFIG_TAGS]


def test_every_fenced_block_is_classified():
    unknown = [f"{b.id} ```{b.tag}" for b in BLOCKS if b.tag not in CONFIG_TAGS | OTHER_TAGS]
    assert not unknown, ("fenced blocks without a known tag (nginx/apache: tested as configuration; "
                         f"{'/'.join(sorted(OTHER_TAGS))}: not configuration): {unknown}")
    for rel in DOCS:
        n = sum(1 for b in CONFIGS if b.path == rel)
        assert n > 0, f"no configuration block found in {rel}: the extraction is broken"
    assert len(CONFIGS) >= 35, f"only {len(CONFIGS)} configuration blocks found"


# ---- dummy files ------------------------------------------------------------------------------------

class Root:
    """A temp root standing in for /; traversable, so that workers (nobody, www-data) reach it."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="acme_docs_"))
        os.chmod(self.dir, 0o755)
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        for d in (self.root, self.state, self.dir / "run", self.dir / "tmp"):
            d.mkdir()
            os.chmod(d, 0o755)
        key = self.dir / "dummy.key"
        crt = self.dir / "dummy.pem"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", crt, "-days", "30", "-subj", "/CN=docs example root")
        self.pem_cert, self.pem_key = crt.read_text(), key.read_text()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def dummy(self, directive, path):
        """Create the file `directive` expects at `path` (already under the temp root)."""
        d = directive.lower()
        p = Path(path)
        if d in ("root", "state_path", "documentroot", "acmestatedir", "alias") or path.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            return
        if d in ("acme_storage_key", "acmestoragekey"):
            p.write_bytes(secrets.token_bytes(32))
            os.chmod(p, 0o600)
        elif d in ("dns_tsig_key", "acmednstsigkey"):
            p.write_text('key "docs-key" { algorithm hmac-sha256; secret "%s"; };\n'
                         % base64.b64encode(secrets.token_bytes(32)).decode())
            os.chmod(p, 0o600)
        elif d in ("external_account_key", "acmeexternalaccountbinding"):
            p.write_text(secrets.token_urlsafe(32) + "\n")
            os.chmod(p, 0o600)
        elif d in ("dns_acme_dns", "acmednsacmedns"):
            p.write_text('{"username": "docs", "password": "%s", "subdomain": "docs", '
                         '"fulldomain": "docs.auth.example.org"}\n' % secrets.token_urlsafe(24))
            os.chmod(p, 0o600)
        elif d in ("acme_notify", "acmenotifycmd", "dns_hook", "acmednshook"):
            p.write_text("#!/bin/sh\n")
            os.chmod(p, 0o755)
        elif d in ("account_key", "ssl_certificate_key", "sslcertificatekeyfile"):
            p.write_text(self.pem_key)
            os.chmod(p, 0o600)
        else:
            p.write_text(self.pem_cert)
            os.chmod(p, 0o644)
        for q in [p.parent, *p.parent.parents]:
            if q == self.dir:
                break
            os.chmod(q, 0o755)


PATH_RX = re.compile(r"(?<![\w$:/.])(/(?:etc|var|srv|opt|home|root|usr/local)/[^\s;\"']*)")
REDIS_RX = re.compile(r"(redis://(?:[^@/\s\"]*@)?)[^:/\s\"]+")


def adapt_common(text, root):
    """Paths under the temp root (with dummy files), Redis on loopback, the repo's build directory."""
    build = str(harness.build_dir())
    text = text.replace("/path/to/repo/build", build)
    text = text.replace("modules/ngx_http_acme_module.so", f"{build}/ngx_http_acme_module.so")
    text = REDIS_RX.sub(lambda m: m.group(1) + "127.0.0.1", text)
    out = []
    for line in text.splitlines():
        words = line.split()
        directive = words[0] if words else ""
        if directive.lower() in ("loadmodule", "load_module"):
            out.append(line)
            continue

        def move(m, directive=directive):
            p = str(root.root) + m.group(1)
            root.dummy(directive, p)
            return p
        out.append(PATH_RX.sub(move, line))
    return "\n".join(out) + "\n"


# ---- nginx ------------------------------------------------------------------------------------------

NGX_MAIN = {"load_module", "user", "worker_processes", "events", "http", "error_log", "pid"}
NGX_HTTP = {"acme_issuer", "acme_shared_zone", "acme_storage", "acme_storage_key", "acme_on_demand", "acme_notify",
            "server", "map", "upstream", "include", "resolver", "resolver_timeout"}
NGX_ISSUER = {"uri", "contact", "account_key", "challenge", "external_account_key", "preferred_chain",
              "profile", "ssl_trusted_certificate", "ssl_verify", "state_path", "accept_terms_of_service",
              "dns_update", "dns_tsig_key", "dns_server", "dns_resolver", "dns_propagation_timeout",
              "dns_hook", "dns_acme_dns"}
NGX_LOCATION = {"acme_status", "limit_except", "allow", "deny"}
# stream{} and mail{} blocks: beside the http block, with Debian's modules and ours (issue #19)
NGX_OUTSIDE = {"stream": ("/usr/share/nginx/modules/ngx_stream_module.so", "ngx_stream_acme_module.so"),
               "mail": ("/usr/share/nginx/modules/ngx_mail_module.so", "ngx_mail_acme_module.so")}


def ngx_top_level(text):
    """First words of the statements at brace depth 0 (comments removed)."""
    words, depth, start = [], 0, True
    for tok in re.findall(r"[{};]|[^\s{};]+", re.sub(r"#[^\n]*", "", text)):
        if tok == "{":
            depth += 1
            start = True
        elif tok == "}":
            depth -= 1
            start = True
        elif tok == ";":
            start = True
        else:
            if start and depth == 0:
                words.append(tok)
            start = False
    return words


def ngx_conf(block, root):
    text = adapt_common(block.text, root)
    text = re.sub(r"(?m)^(\s*)uri\s+[^;]+;", rf"\1uri {DUMMY_CA};", text)
    top = set(ngx_top_level(text))
    unknown = top - NGX_MAIN - NGX_HTTP - NGX_ISSUER - NGX_LOCATION - set(NGX_OUTSIDE) - {
        "listen", "server_name", "acme_certificate", "ssl_certificate", "ssl_certificate_key", "location",
        "root", "return"}
    assert not unknown, f"{block.id}: cannot tell the context of {sorted(unknown)}"
    main, after = "", ""
    if top & set(NGX_OUTSIDE):
        assert top <= set(NGX_OUTSIDE), f"{block.id}: stream/mail and other directives mixed: {sorted(top)}"
        after, text = text, ""
        mods = [NGX_OUTSIDE[t] for t in sorted(top)]
        main = "".join(f"load_module {debian};\n" for debian, _ in mods)
        main += f"load_module {harness.build_dir() / 'ngx_http_acme_module.so'};\n"
        main += "".join(f"load_module {harness.build_dir() / ours};\n" for _, ours in mods)
    elif top & NGX_MAIN:
        assert top <= NGX_MAIN, f"{block.id}: main-level and other directives mixed: {sorted(top)}"
        main, text = text, ""
    elif top & NGX_ISSUER:
        uri = "" if "uri" in top else f" uri {DUMMY_CA};\n"
        text = f"acme_issuer docs {{\n{uri}{text}}}\n"
    else:
        if top & NGX_LOCATION:
            text = f"location = /acme-status {{\n{text}}}\n"
        if not top <= NGX_HTTP:
            cert = "" if re.search(r"(acme|ssl)_certificate\s", text) else " acme_certificate docs;\n"
            text = f"server {{\n listen 443 ssl;\n server_name example.org;\n{cert}{text}}}\n"
    # every issuer: a state_path under the temp root (a block's own comes later and wins), terms accepted
    text = re.sub(r"acme_issuer\s+(\S+)\s*\{",
                  lambda m: f"{m.group(0)}\n state_path {root.state}/{m.group(1)};\n accept_terms_of_service;",
                  text)
    defined = set(re.findall(r"acme_issuer\s+(\S+)\s*\{", text))
    named = set(re.findall(r"(?m)^\s*acme_certificate\s+([^\s;]+)", text + after))
    named |= set(re.findall(r"fallback=([^\s;]+)", text + after))
    if "acme_certificate" in text + after and not named:
        named.add("docs")
    issuers = "".join(f"acme_issuer {n} {{\n uri {DUMMY_CA};\n accept_terms_of_service;\n"
                      f" state_path {root.state}/{n};\n}}\n" for n in sorted(named - defined))
    user = "user root;" if os.geteuid() == 0 else ""
    if "load_module" not in main:
        main += f"load_module {harness.build_dir() / 'ngx_http_acme_module.so'};\n"
    return (f"{main}{user}\nerror_log {root.dir}/error.log;\npid {root.dir}/nginx.pid;\n"
            f"events {{ worker_connections 64; }}\n"
            f"http {{\n access_log off;\n client_body_temp_path {root.dir}/tmp;\n"
            f" proxy_temp_path {root.dir}/tmp;\n fastcgi_temp_path {root.dir}/tmp;\n"
            f" uwsgi_temp_path {root.dir}/tmp;\n scgi_temp_path {root.dir}/tmp;\n{issuers}{text}}}\n{after}")


def nginx_t(conf, root):
    path = root.dir / "nginx.conf"
    path.write_text(conf)
    cp = run_cmd([NGINX_BIN, "-t", "-p", root.dir, "-c", path, "-e", root.dir / "stderr.log"], timeout=60)
    return cp.returncode == 0, cp.stdout + cp.stderr


# ---- Apache -----------------------------------------------------------------------------------------

AP_MODULES = [("mpm_event_module", "mod_mpm_event.so"), ("authz_core_module", "mod_authz_core.so"),
              ("authz_host_module", "mod_authz_host.so"), ("alias_module", "mod_alias.so"),
              ("socache_shmcb_module", "mod_socache_shmcb.so"), ("ssl_module", "mod_ssl.so")]
AP_VHOST = {"acmecertificate", "sslengine", "servername", "serveralias"}


def ap_top_level(text):
    words, depth = [], 0
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("</"):
            depth -= 1
            continue
        if depth == 0:
            words.append(s.split()[0].lstrip("<").lower())
        if s.startswith("<"):
            depth += 1
    return words


def apache_conf(block, root, build=None):
    build = Path(build or harness.build_dir())
    text = adapt_common(block.text, root)
    text = re.sub(r"(?mi)^(\s*)ACMECertificateAuthority\s+.*$", rf"\1ACMECertificateAuthority {DUMMY_CA}", text)
    top = set(ap_top_level(text))
    if top & AP_VHOST:
        name = "" if "servername" in top else " ServerName example.org\n"
        text = f"<VirtualHost *:443>\n{name} SSLEngine on\n{text}</VirtualHost>\n"
    loaded = set(re.findall(r"(?mi)^\s*LoadModule\s+(\S+)", text))
    lines = [f'ServerRoot "{root.dir}"', f'PidFile "{root.dir}/httpd.pid"',
             f'DefaultRuntimeDir "{root.dir}/run"', f'Mutex file:{root.dir}/run default',
             f'ErrorLog "{root.dir}/error.log"', "ServerName localhost", "Listen 127.0.0.1:9443 https"]
    lines += [f"LoadModule {n} {APACHE_MODULES / f}" for n, f in AP_MODULES if n not in loaded]
    if "acme_module" not in loaded:
        lines.append(f"LoadModule acme_module {build / 'mod_acme.so'}")
    if os.geteuid() == 0:
        lines += ["User www-data", "Group www-data"]
    lines += [f'ACMEStateDir "{root.state}"', "ACMEAcceptTermsOfService on"]
    return "\n".join(lines) + "\n" + text


def apache_t(conf, root):
    path = root.dir / "httpd.conf"
    path.write_text(conf)
    cp = run_cmd([APACHE_BIN, "-t", "-f", path], timeout=60,
                 env=harness.child_env({"APACHE_RUN_DIR": root.dir / "run"}))
    return cp.returncode == 0, cp.stdout + cp.stderr


@pytest.fixture
def root():
    r = Root()
    yield r
    r.cleanup()


@pytest.mark.parametrize("block", CONFIGS, ids=[b.id for b in CONFIGS])
def test_docs_config_block(block, root):
    if block.tag == "nginx":
        conf = ngx_conf(block, root)
        ok, out = nginx_t(conf, root)
    else:
        conf = apache_conf(block, root)
        ok, out = apache_t(conf, root)
    assert ok, f"{block.id} ({block.tag}) fails the config test:\n{out}\n--- as tested:\n{conf}"


# ---- the packaged acme.conf: every directive, and all of it uncommented still loads ------------------

def test_packaged_acme_conf_has_every_directive(root):
    src = "".join((REPO_ROOT / "apache_mod_acme" / f).read_text()
                  for f in os.listdir(REPO_ROOT / "apache_mod_acme") if f.endswith(".c"))
    directives = set(re.findall(r'AP_INIT_\w+\("(ACME\w+)"', src))
    assert len(directives) > 10, directives
    conf = (REPO_ROOT / "debian/conf/acme.conf").read_text()
    shown = set(re.findall(r"(?m)^\s*#\s*(ACME\w+)", conf))
    missing = sorted(directives - shown)
    assert not missing, f"debian/conf/acme.conf (\"every setting\") lacks {missing}"
    # what the README asks: uncomment the settings (and the status block) and edit; it must load
    text = re.sub(r"(?m)^(\s*)#(?=\s*(ACME\w+|</?Location|SetHandler|Require)\b)", r"\1", conf)
    text = re.sub(r"(?m)^\s*(ACMECertificate|ACMEOnDemand) on\s*$", "", text)   # the header's vhost examples
    block = Block("debian/conf/acme.conf (uncommented)", 1, "apache", text)
    conf = apache_conf(block, root)
    ok, out = apache_t(conf, root)
    assert ok, f"{block.id} fails the config test:\n{out}\n--- as tested:\n{conf}"
    assert "ACMEStatusRenew on" in conf


# ---- errors the config test must catch (not the start) ----------------------------------------------

def test_apache_same_certificate_name_other_names_fails_config_test(root):
    """ACME0034 (two vhosts, one store name, different names) at apache2 -t, with the real port."""
    vhosts = ("<VirtualHost *:443>\n ServerName a.example.org\n ServerAlias b.example.org\n"
              " SSLEngine on\n ACMECertificate on\n</VirtualHost>\n"
              "<VirtualHost *:443>\n ServerName c.example.org\n SSLEngine on\n"
              " ACMECertificate a.example.org\n</VirtualHost>\n")
    conf = apache_conf(Block("ACME0034", 1, "apache", vhosts), root)
    ok, out = apache_t(conf, root)
    assert not ok, f"apache2 -t accepts two certificates 'a.example.org' with other names:\n{out}"
    assert "ACME0034" in out and "certificate 'a.example.org' is already configured" in out, out
    assert re.search(r"by [a-c]\.example\.org:443 \(\S+:\d+\)", out) and ":0 " not in out, out


def test_nginx_trusted_certificate_must_be_pem(root):
    bad = root.root / "not-a-ca.pem"
    bad.write_text("this is not a certificate\n")
    os.chmod(bad, 0o644)
    block = Block("ssl_trusted_certificate", 1, "nginx", f"ssl_trusted_certificate {bad};\n")
    conf = ngx_conf(block, root)
    ok, out = nginx_t(conf, root)
    assert not ok, f"nginx -t accepts a non-PEM ssl_trusted_certificate:\n{out}"
    assert f'invalid "ssl_trusted_certificate" "{bad}"' in out and "no PEM certificates" in out, out


# ---- the README's backup commands, on a fresh machine (only the paths moved under a temp root) ------

def test_readme_backup_commands_work_on_a_fresh_server(root):
    blocks = [b for b in fenced_blocks("README.md") if b.tag == "sh" and "tar -C" in b.text]
    assert len(blocks) == 1, [b.id for b in blocks]
    for d in ("var/lib/nginx/acme/letsencrypt", "var/lib/apache2/acme"):
        (root.root / d).mkdir(parents=True)
        (root.root / d / "account.json").write_text("{}\n")
    (root.root / "root").mkdir()
    script = re.sub(r"(?<![\w/])/(var|root)/", lambda m: f"{root.root}/{m.group(1)}/", blocks[0].text)
    cp = run_cmd(["bash", "-e", "-c", script], timeout=30)
    assert cp.returncode == 0, f"{blocks[0].id} fails:\n{script}\n{cp.stdout}{cp.stderr}"
    made = sorted(p.name for p in (root.root / "root" / "backup").iterdir())
    assert len(made) == 2 and all(n.endswith(".tar.gz") for n in made), made
    listing = run_cmd(["tar", "-tzf", root.root / "root" / "backup" / made[0]], timeout=30).stdout
    assert "acme/" in listing, listing

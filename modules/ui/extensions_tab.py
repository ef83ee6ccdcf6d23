"""The Extensions tab (A1111's): the installed extensions with enable checkboxes, "Apply and
restart UI", "Check for updates", "Disable all extensions"; "Available" (an extension index); and
"Install from URL".

Layout and element ids follow A1111: the sub-tabs `tabs_extensions`, the table `#extensions`
(one `enable_<name>` checkbox per row) inside `extensions_installed_html`, the radio
`extensions_disable_all`, the result `extension_install_result`. The checkboxes are plain HTML (as
in A1111); the Apply button's own JS reads them and hands the unchecked names to Python.

"Check for updates" runs `git fetch` for each git-installed extension and fills the table's Update
column with A1111's words ("latest", "behind HEAD", "unknown (remote error)" with the reason).
"Available" loads A1111's index.json from the "Extension index URL" box (an https:// or file:// URL
or a path; remembered in the `extensions_index_url` option) only when "Load from:" is pressed; a
failure is a message in the tab. Its filters and orders are A1111's; an entry's Install button
(inline HTML, like A1111's) hands its URL to the hidden `install_extension_button` and installs
through Install from URL's path, under the same rules.

Apply stores `disabled_extensions` / `disable_all_extensions` in config.json, then restarts the
server process when it can (modules/restart.py) so that the change takes effect; the page reloads
when the server answers again. Changing extensions is refused with a message when the server is
reachable beyond this computer, unless --enable-insecure-extension-access (extension_install.py).
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Callable

import gradio as gr

from modules import extension_install, extensions, restart
from modules.services.options import Options

RESTARTING = "restarting"
ERROR_STYLE = "color: var(--error-text-color, #dc2626); white-space: pre-wrap"

# The Apply button's JS: the names of the unchecked extensions, as JSON, for `apply`.
APPLY_JS = """(disabled, mode) => {
    const app = document.querySelector('gradio-app');
    const root = (app && app.shadowRoot) || document;
    const boxes = root.querySelectorAll('#extensions_installed_html input.extension-enable');
    const off = Array.from(boxes).filter((box) => !box.checked).map((box) => box.dataset.extension);
    return [JSON.stringify(off), mode];
}"""

# After a restart was scheduled: wait until the server has gone away and answers again, then
# reload the page (A1111's restart_reload). Capped, so a restart that never happens still reloads.
RELOAD_JS = """(flag) => {
    if (flag !== 'restarting') { return; }
    const started = Date.now();
    let down = false;
    const ping = () => fetch(window.location.href, {cache: 'no-store'}).then(
        () => { if (down || Date.now() - started > 120000) { window.location.reload(); } else { setTimeout(ping, 300); } },
        () => { down = true; setTimeout(ping, 300); });
    setTimeout(ping, 300);
}"""


# The Available table's Install buttons: put the entry's URL where the hidden button's event reads
# it, and click that button (A1111's install_extension_from_index).
INSTALL_FROM_INDEX_ON_LOAD = """element.addEventListener('click', (event) => {
    const button = event.target.closest('button.extension-install');
    if (!button || button.disabled) { return; }
    window.easelExtensionToInstall = button.dataset.url;
    button.disabled = true;
    button.textContent = 'Installing...';
    const app = document.querySelector('gradio-app');
    const root = (app && app.shadowRoot) || document;
    root.querySelector('#install_extension_button').click();
});"""
INSTALL_FROM_INDEX_JS = "(url, tags, order, search) => [window.easelExtensionToInstall || '', tags, order, search]"


def _date(timestamp: int | None) -> str:
    return time.asctime(time.gmtime(timestamp)) if timestamp else ""


def _commit_link(ext: extensions.Extension) -> str:
    text = html.escape(ext.version)
    remote = extension_install.normalize_git_url(ext.remote)
    if ext.commit_hash and remote.startswith("https://github.com/"):
        return f'<a href="{html.escape(remote)}/commit/{html.escape(ext.commit_hash)}" target="_blank">{text}</a>'
    return text


def _status(ext: extensions.Extension, mode: str) -> str:
    notes = []
    if ext.disabled_reason:
        notes.append("not loaded this run")
    elif ext.enabled and (mode == "all" or (mode == "extra" and not ext.is_builtin)):
        notes.append('not loaded: "Disable all extensions" is set')
    error = ext.error
    text = html.escape("; ".join(notes))
    if error:
        text += (" " if text else "") + f'<span class="extension-error" style="{ERROR_STYLE}">{html.escape(error)}</span>'
    return text


def _update(ext: extensions.Extension) -> str:
    """The Update column: the last check's result (A1111's words), and why it could not tell."""
    if not ext.remote:
        return ""
    text = html.escape(ext.status)
    if ext.update_error:
        text += f' <span class="extension-update-error" style="{ERROR_STYLE}">{html.escape(ext.update_error)}</span>'
    return text


def extension_table(settings: dict | None = None) -> str:
    """A1111's installed-extensions table, rescanning the folders first."""
    extensions.list_extensions(settings)
    mode = extensions.disable_all_mode()
    rows = []
    for ext in extensions.extensions:
        ext.read_info_from_repo()
        name = html.escape(ext.name)
        remote = html.escape(ext.remote or "")
        url = f'<a href="{remote}" target="_blank">{remote}</a>' if remote else ("built-in" if ext.is_builtin else "")
        checked = ' checked="checked"' if ext.enabled else ""
        row_class = "extension-row" + (" extension-builtin" if ext.is_builtin else "") + (
            " extension-broken" if ext.error else "")
        rows.append(
            f'<tr class="{row_class}" data-extension="{name}">'
            f'<td><label><input class="extension-enable gr-check-radio gr-checkbox" type="checkbox" '
            f'name="enable_{name}" data-extension="{name}"{checked}>{name}</label></td>'
            f"<td>{url}</td><td>{html.escape(ext.branch or '')}</td><td>{_commit_link(ext)}</td>"
            f'<td>{html.escape(_date(ext.commit_date))}</td><td class="extension_update">{_update(ext)}</td>'
            f'<td class="extension_status">{_status(ext, mode)}</td></tr>')
    if not rows:
        rows.append(f'<tr><td colspan="7">No extensions installed. Put them in {html.escape(extensions.extensions_dir)} '
                    f"or use Install from URL.</td></tr>")
    return ("<table id=\"extensions\"><thead><tr>"
            "<th><abbr title=\"Use checkbox to enable the extension; it will be enabled or disabled when you click "
            "apply button\">Extension</abbr></th><th>URL</th><th>Branch</th><th>Version</th><th>Date</th>"
            "<th><abbr title=\"Filled by Check for updates\">Update</abbr></th><th>Status</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _message(text: str, error: bool = False) -> str:
    if error:
        return f'<div class="extension-message-error" style="{ERROR_STYLE}">{html.escape(text)}</div>'
    return f'<div class="extension-message">{html.escape(text)}</div>'


class ExtensionsTab:
    def __init__(self, options: Options, cmd_opts: Any = None,
                 submit: Callable[[str, Callable[[], None]], object] | None = None):
        """`submit` queues a function on the worker (Engine.queue.submit), so that a restart
        waits for the jobs already queued."""
        self.options = options
        self._cmd_opts = cmd_opts
        self.submit = submit
        self.index: dict[str, Any] = {"tags": {}, "extensions": []}  # the last index loaded (A1111: one per server)

    @property
    def cmd_opts(self) -> Any:
        return self._cmd_opts if self._cmd_opts is not None else extensions.current_cmd_opts()

    def table_html(self) -> str:
        return extension_table(self.options.data)

    def info(self) -> str:
        notes = []
        refusal = extension_install.access_refusal(self.cmd_opts)
        if refusal:
            notes.append(_message(refusal, error=True))
        if extensions.disable_all_mode() != "none":
            notes.append(_message('"Disable all extensions" is set; change it to "none" to load all extensions again.'))
        return "".join(notes)

    def build(self) -> None:
        with gr.Tabs(elem_id="tabs_extensions"):
            with gr.Tab("Installed", id="installed", elem_id="extensions_installed_tab"):
                with gr.Row(elem_id="extensions_installed_top"):
                    self.apply_button = gr.Button("Apply and restart UI", variant="primary", elem_id="extensions_apply")
                    self.disable_all = gr.Radio(list(extensions.DISABLE_ALL_CHOICES), label="Disable all extensions",
                                                value=lambda: self.options.get("disable_all_extensions", "none"),
                                                elem_id="extensions_disable_all", interactive=True)
                    self.disabled_list = gr.Textbox(elem_id="extensions_disabled_list", visible="hidden")
                    self.restart_flag = gr.Textbox(elem_id="extensions_restart_flag", visible="hidden")
                    self.check_button = gr.Button("Check for updates", elem_id="extensions_check")
                self.info_html = gr.HTML(self.info, elem_id="extensions_installed_info")
                self.table = gr.HTML(self.table_html, elem_id="extensions_installed_html")
            with gr.Tab("Available", id="available", elem_id="extensions_available_tab"):
                with gr.Row():
                    self.load_button = gr.Button("Load from:", variant="primary", elem_id="extensions_index_load")
                    self.index_url = gr.Textbox(value=lambda: self.options.get("extensions_index_url", ""),
                                                label="Extension index URL", elem_id="extensions_index_url")
                    self.to_install = gr.Textbox(elem_id="extension_to_install", visible="hidden")
                    self.install_from_index_button = gr.Button("Install", elem_id="install_extension_button",
                                                               visible="hidden")
                with gr.Row():
                    self.hide_tags = gr.CheckboxGroup(list(extension_install.HIDE_TAG_CHOICES),
                                                      value=list(extension_install.DEFAULT_HIDDEN_TAGS),
                                                      label="Hide extensions with tags", elem_id="extensions_hide_tags")
                    self.sort_order = gr.Radio(list(extension_install.SORT_ORDERS), value="newest first", label="Order",
                                               elem_id="extensions_sort_order")
                self.search = gr.Textbox(label="Search", elem_id="extensions_search")
                self.available_result = gr.HTML(elem_id="extensions_available_result")
                self.available = gr.HTML(elem_id="extensions_available_html", js_on_load=INSTALL_FROM_INDEX_ON_LOAD)
            with gr.Tab("Install from URL", id="install_from_url", elem_id="extensions_install_tab"):
                self.install_url = gr.Textbox(label="URL for extension's git repository", elem_id="extension_install_url")
                self.install_branch = gr.Textbox(label="Specific branch name", elem_id="extension_install_branch",
                                                 placeholder="Leave empty for default main branch")
                self.install_dirname = gr.Textbox(label="Local directory name", elem_id="extension_install_dirname",
                                                  placeholder="Leave empty for auto")
                self.install_button = gr.Button("Install", variant="primary", elem_id="extension_install_button")
                self.install_result = gr.HTML(elem_id="extension_install_result")
        self.apply_button.click(self.apply, inputs=[self.disabled_list, self.disable_all], js=APPLY_JS,
                                outputs=[self.info_html, self.table, self.restart_flag]
                                ).then(None, inputs=[self.restart_flag], js=RELOAD_JS)
        self.check_button.click(self.check_updates, outputs=[self.info_html, self.table])
        filters = [self.hide_tags, self.sort_order, self.search]
        self.load_button.click(self.load_index, inputs=[self.index_url, self.hide_tags, self.sort_order],
                               outputs=[self.index_url, self.available, self.hide_tags, self.search,
                                        self.available_result])
        for control in filters:
            control.change(self.refresh_available, inputs=filters, outputs=[self.available, self.available_result])
        self.install_from_index_button.click(self.install_from_index, inputs=[self.to_install, *filters],
                                             js=INSTALL_FROM_INDEX_JS,
                                             outputs=[self.available, self.table, self.available_result])
        self.install_button.click(self.install, inputs=[self.install_url, self.install_branch, self.install_dirname],
                                  outputs=[self.install_url, self.table, self.install_result])

    def apply(self, disabled_json: str, mode: str):
        """Store the enabled/disabled state and restart (or say that a restart is needed)."""
        refusal = extension_install.access_refusal(self.cmd_opts)
        if refusal:
            return _message(refusal, error=True), self.table_html(), ""
        try:
            disabled = json.loads(disabled_json or "[]")
        except json.JSONDecodeError:
            disabled = None
        if not isinstance(disabled, list) or not all(isinstance(n, str) for n in disabled):
            return _message(f"wrong list of disabled extensions: {disabled_json!r}", error=True), self.table_html(), ""
        if mode not in extensions.DISABLE_ALL_CHOICES:
            return _message(f"Disable all extensions must be one of none, extra, all; got {mode!r}", error=True), \
                self.table_html(), ""
        try:  # the command line may lock these (--freeze-settings): its message, nothing changed
            for key, value in (("disabled_extensions", sorted(set(disabled))), ("disable_all_extensions", mode)):
                self.options.check(key, value)
        except ValueError as exc:
            return _message(str(exc), error=True), self.table_html(), ""
        self.options.set("disabled_extensions", sorted(set(disabled)))
        self.options.set("disable_all_extensions", mode)
        try:
            self.options.save()
        except OSError as exc:
            return _message(f"Could not save the settings: {exc}", error=True), self.table_html(), ""
        print(f"[extensions] disabled: {', '.join(sorted(set(disabled))) or 'none'}; disable all: {mode}", flush=True)
        if restart.is_restartable():
            restart.schedule_restart(self.submit)
            return _message("Saved. Easel is restarting to load the extensions; this page reloads when it is back."), \
                self.table_html(), RESTARTING
        return _message("Saved. Restart Easel for the change to take effect."), self.table_html(), ""

    def install(self, url: str, branch: str, dirname: str):
        try:
            target = extension_install.install_from_url(url, branch, dirname, cmd_opts=self.cmd_opts)
        except (extension_install.ExtensionAccessError, ValueError, RuntimeError, OSError) as exc:
            return gr.update(), self.table_html(), _message(str(exc), error=True)
        name = target.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        problems = extensions.errors_of(name)
        text = f"Installed into {target}. Use the Installed tab's Apply and restart UI to load it."
        if problems:
            text += " Problems: " + "; ".join(problems)
        return "", self.table_html(), _message(text, error=bool(problems))

    def check_updates(self):
        """Fetch each git-installed extension's remote and record whether it is behind (the
        table's Update column); refused like the other changes (it writes to their .git)."""
        refusal = extension_install.access_refusal(self.cmd_opts)
        if refusal:
            return _message(refusal, error=True), self.table_html()
        extensions.list_extensions(self.options.data)
        checked = [ext for ext in extensions.extensions if not ext.is_builtin]
        for ext in checked:
            ext.check_updates()
        behind = [ext.name for ext in checked if ext.can_update]
        failed = [ext.name for ext in checked if ext.update_error]
        text = f"Checked {sum(1 for ext in checked if ext.remote)} git extension(s): " + (
            f"updates for {', '.join(behind)}" if behind else "no updates found")
        if failed:
            text += f"; could not check {', '.join(failed)} (offline, or the remote is gone)"
        return self.info() + _message(text, error=bool(failed)), self.table_html()

    def available_html(self, hide_tags: list[str] | None, order: str, search: str = "") -> str:
        return extension_install.available_table(self.index, hide_tags or [], order, search)

    def load_index(self, source: str, hide_tags: list[str] | None, order: str):
        """"Load from:": read the index, remember its address, show its table and tags; a failure
        is a message and leaves the rest as it was."""
        try:
            self.index = extension_install.load_index(source, cmd_opts=self.cmd_opts)
        except (extension_install.ExtensionIndexError, extension_install.ExtensionAccessError) as exc:
            return gr.update(), gr.update(), gr.update(), gr.update(), _message(str(exc), error=True)
        source = source.strip()
        try:  # remembered for the next visit; a locked option (--freeze-settings) just is not
            if self.options.set("extensions_index_url", source):
                self.options.save()
        except (ValueError, OSError):
            pass
        tags = extension_install.tag_choices(self.index)
        hide_tags = [tag for tag in (hide_tags or []) if tag in tags]
        count = len(self.index["extensions"])
        return (source, self.available_html(hide_tags, order), gr.update(choices=tags, value=hide_tags), "",
                _message(f"Loaded {count} extension(s) from {source}."))

    def refresh_available(self, hide_tags: list[str] | None, order: str, search: str):
        return self.available_html(hide_tags, order, search), ""

    def install_from_index(self, url: str, hide_tags: list[str] | None, order: str, search: str):
        """An entry's Install button: Install from URL's path (same rules), then both tables again."""
        _url, table, message = self.install(url, "", "")
        return self.available_html(hide_tags, order, search), table, message

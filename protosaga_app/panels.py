"""The viewer's GUI panels: render mode, edit buttons, splitting, export, saved edits, and the instance list.

Built once on the server's shared GUI, so every tab shows the same widgets and values; `Gui.refresh`
redraws what depends on the edit state after every edit.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import viser

from protosaga_core.io.exports import ExportError
from protosaga_core.palette import instance_color

from .edit_log import EditLog, describe
from .inspector_panel import InspectorPanel
from .live import RenderMode
from .selection import Action, EditState, button_label

if TYPE_CHECKING:
    from .server import ViewerApp

MODES: dict[str, RenderMode] = {
    "RGB splats": "rgb",
    "Instance colours": "instances",
    "Segmentation (per pixel)": "segmentation",
    "Feature PCA": "pca",
}
EDIT_BUTTONS: tuple[tuple[str, Action], ...] = (
    ("Hide", "hide"),
    ("Isolate", "isolate"),
    ("Show all", "show_all"),
    ("Delete", "delete"),
    ("Invert selection", "invert_selection"),
    ("Clear selection", "clear_selection"),
    ("Undo", "undo"),
    ("Redo", "redo"),
)
"""The edit buttons (their hotkeys are added to their names from `selection.KEY_BINDINGS`)."""
NO_SELECTION = "(none)"


@dataclass
class Gui:
    app: "ViewerApp"
    selection: viser.GuiMarkdownHandle
    undo: viser.GuiButtonHandle
    redo: viser.GuiButtonHandle
    instance_table: viser.GuiHtmlHandle
    pick: viser.GuiDropdownHandle
    name: viser.GuiTextHandle
    inspector: InspectorPanel
    edits: viser.GuiMarkdownHandle
    discard: viser.GuiButtonHandle

    def refresh(self, state: EditState) -> None:
        """Redraw what depends on the edit state."""
        document = self.app.document
        model = document.model
        self.selection.content = _selection_text(self.app, state)
        self.undo.disabled = not model.can_undo()
        self.redo.disabled = not model.can_redo()
        self.edits.content = _edits_text(document.edit_log, state)
        self.discard.disabled = state.edits_only() == EditState()
        self.instance_table.content = _instance_table(self.app, state)
        live = sorted(model.live_instances(state))
        self.pick.options = (NO_SELECTION, *(_label(self.app, i) for i in live))
        single = next(iter(state.selected)) if len(state.selected) == 1 else None
        self.pick.value = _label(self.app, single) if single is not None else NO_SELECTION
        self.name.disabled = single is None or document.scene.instance(single) is None  # splits have no table row
        self.name.value = _name(self.app, single) if single is not None else ""
        self.inspector.refresh(state)


def build(app: "ViewerApp") -> Gui:
    gui = app.server.gui
    tabs = gui.add_tab_group()
    with tabs.add_tab("Edit"):
        mode = gui.add_dropdown("Render mode", tuple(MODES), initial_value=_mode_label(app.mode))
        mode.on_update(lambda _: app.set_mode(MODES[mode.value]))
        selection = gui.add_markdown("")
        buttons = {}
        for name, action in EDIT_BUTTONS:
            buttons[action] = gui.add_button(button_label(name, action))
            buttons[action].on_click(lambda _, action=action: app.run_action(action))
        unassigned = gui.add_checkbox("Unassigned Gaussians", initial_value=app.document.show_unassigned)
        unassigned.on_update(lambda _: _show_unassigned(app, unassigned.value))
        frustums = gui.add_checkbox("Training cameras", initial_value=True)
        frustums.on_update(lambda _: app.set_frustums_visible(frustums.value))
        gui.add_markdown(
            "Click: select · Shift+click: add · Ctrl+drag: rectangle · Ctrl+Shift+drag: add rectangle · "
            "Alt+drag: split the rectangle off the selection"
        )
        splits = gui.add_checkbox(
            "Ctrl+drag splits", initial_value=False,
            hint="A rectangle makes the Gaussians of the selection inside it (through every depth) a new instance",
        )
        splits.on_update(lambda _: setattr(app, "rectangle_splits", splits.value))
        with gui.add_folder("Export (plain INRIA PLY)"):
            with_ids = gui.add_checkbox("Add instance-id column", initial_value=False)
            for label, selection_only in (("Export selection", True), ("Export edited scene", False)):
                button = gui.add_button(label)
                button.on_click(lambda event, only=selection_only: _export(app, event.client, only, with_ids.value))
        with gui.add_folder("Saved edits"):
            edits = gui.add_markdown("")
            discard = gui.add_button(
                "Discard edits", hint="Back to the computed labels: no merge, split, deletion or hiding (Undo brings them back)"
            )
            discard.on_click(lambda _: app.run_action("discard_edits"))
    with tabs.add_tab("Instances"):
        pick = gui.add_dropdown("Select", (NO_SELECTION,), initial_value=NO_SELECTION)
        pick.on_update(lambda event: _pick_from_list(app, event.client, pick.value))
        name = gui.add_text("Name", initial_value="", disabled=True)
        name.on_update(lambda event: _rename(app, event.client, name.value))
        table = gui.add_html("")
    with tabs.add_tab("Inspector"):
        inspector = InspectorPanel.build(app)
    return Gui(app, selection, buttons["undo"], buttons["redo"], table, pick, name, inspector, edits, discard)


def _mode_label(mode: RenderMode) -> str:
    return next(label for label, value in MODES.items() if value == mode)


def _name(app: "ViewerApp", instance_id: int) -> str:
    return app.document.instance_name(instance_id)


def _label(app: "ViewerApp", instance_id: int) -> str:
    """A dropdown entry: unique (the id leads), readable (the name follows)."""
    return f"{instance_id}: {_name(app, instance_id)}"


def _selection_text(app: "ViewerApp", state: EditState) -> str:
    if not state.selected:
        return "**Selection:** nothing (click an object)"
    counts = app.document.instance_counts(state)
    # names on their own line, at most three: the panel is ~300 px wide and cuts longer lines off
    names = ", ".join(_label(app, i) for i in sorted(state.selected)[:3]) + (" ..." if len(state.selected) > 3 else "")
    total = sum(counts.get(i, 0) for i in state.selected)
    return f"**Selection:** {len(state.selected)} instance(s) · {total:,} Gaussians  \n{names}"


def _instance_table(app: "ViewerApp", state: EditState) -> str:
    """Colour, id, name, #Gaussians, #views of every live instance; the selected ones in bold."""
    model = app.document.model
    counts = app.document.instance_counts(state)
    prototypes = app.document.prototypes(state)
    views = dict(zip(prototypes.ids.tolist(), prototypes.num_views.tolist()))
    visible = model.visible_instances(state)
    rows = []
    for instance_id in sorted(model.live_instances(state)):
        r, g, b = instance_color(instance_id)
        weight = "bold" if instance_id in state.selected else "normal"
        opacity = "1" if instance_id in visible else "0.45"
        rows.append(
            f'<tr style="font-weight:{weight};opacity:{opacity}" data-instance="{instance_id}">'
            f'<td><span style="display:inline-block;width:0.9em;height:0.9em;background:rgb({r},{g},{b})"></span></td>'
            f'<td>{instance_id}</td><td style="overflow-wrap:anywhere">{html.escape(_name(app, instance_id))}</td>'
            f'<td style="text-align:right;white-space:nowrap">{counts.get(instance_id, 0):,}</td>'
            f'<td style="text-align:right;white-space:nowrap">{views.get(instance_id, 0)}</td></tr>'
        )
    # fixed layout with narrow number columns: the panel's width, not the longest name, sets the columns
    return (
        '<table style="width:100%;font-size:0.8em;border-collapse:collapse;table-layout:fixed">'
        '<tr><th style="width:1.2em"></th><th style="width:2.2em">id</th><th>name</th>'
        '<th style="width:5.5em;text-align:right">Gaussians</th><th style="width:3em;text-align:right">views</th></tr>'
        + "".join(rows) + "</table>"
    )


def _edits_text(log: EditLog, state: EditState) -> str:
    """The edits the scene holds, whether they are saved, and what went wrong with the file if anything."""
    if state.edits_only() == EditState():
        lines = ["**Edits:** none (the computed labels)"]
    elif log.writable and log.save_error is None:
        lines = [f"**Edits:** {describe(state)}; saved in `{log.path.name}`, restored when the scene opens again"]
    else:
        lines = [f"**Edits:** {describe(state)}; not saved"]
    lines += [f"⚠ {_markdown_text(problem)}" for problem in (log.notice, log.save_error) if problem]
    return "\n\n".join(lines)


def _markdown_text(text: str) -> str:
    """`text` shown as it is: file names hold `_` and `*`, which markdown would take for emphasis."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", text)


def _show_unassigned(app: "ViewerApp", show: bool) -> None:
    app.document.show_unassigned = show
    app.refresh_view()


def _pick_from_list(app: "ViewerApp", client: viser.ClientHandle | None, value: str) -> None:
    if client is None or value == NO_SELECTION:  # a programmatic update, or the placeholder entry
        return
    instance_id = int(value.split(":", 1)[0])
    if app.document.model.state.selected != frozenset({instance_id}):
        app.document.model.click(instance_id)


def _rename(app: "ViewerApp", client: viser.ClientHandle | None, name: str) -> None:
    selected = app.document.model.state.selected
    if client is None or len(selected) != 1:
        return
    instance_id = next(iter(selected))
    if name.strip() and name.strip() != _name(app, instance_id):
        app.document.scene.rename(instance_id, name)
        app.gui.refresh(app.document.model.state)


def _export(app: "ViewerApp", client: viser.ClientHandle | None, selection_only: bool, with_ids: bool) -> None:
    if client is None:
        return
    try:
        export = app.document.export(selection_only, with_ids)
    except (ExportError, OSError) as error:
        client.add_notification("Export failed", str(error), color="red", auto_close_seconds=8.0)
        return
    client.send_file_download(export.path.name, export.path.read_bytes(), save_immediately=True)
    client.add_notification(
        "Exported",
        f"{export.count:,} Gaussians to {export.path} (also downloaded); what it holds: {export.record.name}",
        auto_close_seconds=8.0,
    )

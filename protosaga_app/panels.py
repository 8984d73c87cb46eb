"""The viewer's GUI panels: render mode, edit buttons, splitting, export, saved edits, and the instance list.

Built once on the server's shared GUI, so every tab shows the same widgets and values; `Gui.refresh`
redraws what depends on the edit state after every edit.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

import viser

from protosaga_core.io.exports import LEFT_OUT, ExportError, ExportFormat
from protosaga_core.io.scene_dir import FEATURES_HINT
from protosaga_core.palette import instance_color

from .document import SceneDocument
from .edit_log import EditLog, describe
from .inspector_panel import InspectorPanel
from .live import FEATURE_MODES, RenderMode
from .selection import Action, EditState, apply_action, button_label

MODES: dict[str, RenderMode] = {
    "RGB splats": "rgb",
    "Instance colours": "instances",
    "Segmentation (per pixel)": "segmentation",
    "Prototypes (Eq. 19 per pixel)": "prototypes",
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
FORMATS: dict[str, ExportFormat] = {
    "PLY (any viewer)": "ply",
    "Compressed PLY (SuperSplat)": "ply_compressed",
    ".splat (web viewers)": "splat",
}
"""The export format dropdown's entries."""
NO_SELECTION = "(none)"


@dataclass(frozen=True)
class ViewerControls:
    """What the panels may ask of the viewer beyond editing the document (which they do through its model)."""

    set_mode: Callable[[RenderMode], None]
    show_frustums: Callable[[bool], None]
    go_to_view: Callable[[viser.ClientHandle, str], None]
    """Move a tab's camera into a training view."""
    redraw: Callable[[], None]
    """Redraw after a change outside the edit model (showing the unassigned Gaussians)."""
    set_rectangle_splits: Callable[[bool], None]
    """Whether Ctrl+drag splits rather than selects."""


@dataclass
class Gui:
    document: SceneDocument
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
        document = self.document
        model = document.model
        self.selection.content = _selection_text(document, state)
        self.undo.disabled = not model.can_undo()
        self.redo.disabled = not model.can_redo()
        self.edits.content = _edits_text(document.edit_log, state)
        self.discard.disabled = state.edits_only() == EditState()
        self.instance_table.content = _instance_table(document, state)
        live = sorted(model.live_instances(state))
        self.pick.options = (NO_SELECTION, *(_label(document, i) for i in live))
        single = next(iter(state.selected)) if len(state.selected) == 1 else None
        self.pick.value = _label(document, single) if single is not None else NO_SELECTION
        self.name.disabled = single is None
        self.name.value = document.instance_name(single) if single is not None else ""
        self.inspector.refresh(state)

    def rename_selected(self, client: viser.ClientHandle | None, name: str) -> None:
        """Give the one selected instance a new name (from the Name field; `client` None: a programmatic update)."""
        selected = self.document.model.state.selected
        if client is None or len(selected) != 1:
            return
        instance_id = next(iter(selected))
        if name.strip() and name.strip() != self.document.instance_name(instance_id):
            try:
                self.document.rename(instance_id, name)  # a scene.json rename is no edit: nothing else refreshes
            except ValueError as error:  # too long: the field shows the name kept again
                client.add_notification("Name not changed", str(error), color="red", auto_close_seconds=8.0)
            self.refresh(self.document.model.state)


def build(gui: viser.GuiApi, document: SceneDocument, controls: ViewerControls, mode: RenderMode) -> Gui:
    """The panels on `gui` (the server's, shared by every tab), starting in render mode `mode`."""
    model = document.model
    tabs = gui.add_tab_group()
    with tabs.add_tab("Edit"):
        # An imported scene has no features until they are learnt on it: no PCA of them to show.
        featureless = document.scene.gaussians.feature_dim == 0
        modes = tuple(label for label, value in MODES.items() if not (featureless and value in FEATURE_MODES))
        mode_choice = gui.add_dropdown("Render mode", modes, initial_value=_mode_label(mode))
        if featureless:
            gui.add_markdown(f"*Prototypes and feature PCA: this imported scene has no per-Gaussian features yet; {FEATURES_HINT}.*")
        mode_choice.on_update(lambda _: controls.set_mode(MODES[mode_choice.value]))
        selection = gui.add_markdown("")
        buttons = {}
        for name, action in EDIT_BUTTONS:
            buttons[action] = gui.add_button(button_label(name, action))
            buttons[action].on_click(lambda _, action=action: apply_action(model, action))
        unassigned = gui.add_checkbox("Unassigned Gaussians", initial_value=document.show_unassigned)
        unassigned.on_update(lambda _: _show_unassigned(document, controls, unassigned.value))
        frustums = gui.add_checkbox("Training cameras", initial_value=True)
        frustums.on_update(lambda _: controls.show_frustums(frustums.value))
        gui.add_markdown(
            "Click: select · Shift+click: add · Ctrl+drag: rectangle · Ctrl+Shift+drag: add rectangle · "
            "Alt+drag: split the rectangle off the selection"
        )
        splits = gui.add_checkbox(
            "Ctrl+drag splits", initial_value=False,
            hint="A rectangle makes the Gaussians of the selection inside it (through every depth) a new instance",
        )
        splits.on_update(lambda _: controls.set_rectangle_splits(splits.value))
        with gui.add_folder("Export"):
            file_format = gui.add_dropdown(
                "Format", tuple(FORMATS), initial_value=next(iter(FORMATS)),
                hint="PLY: every property; compressed PLY: ~4x smaller, quantised, without nearly transparent "
                "Gaussians; .splat: quantised, base colour only (no view-dependent colour)",
            )
            with_ids = gui.add_checkbox("Add instance-id column", initial_value=False, hint="PLY only")
            file_format.on_update(lambda _: _ids_only_in_ply(with_ids, FORMATS[file_format.value]))
            for label, selection_only in (("Export selection", True), ("Export edited scene", False)):
                button = gui.add_button(label)
                button.on_click(
                    lambda event, only=selection_only: _export(document, event.client, only, with_ids.value, FORMATS[file_format.value])
                )
        with gui.add_folder("Saved edits"):
            edits = gui.add_markdown("")
            discard = gui.add_button(
                "Discard edits", hint="Back to the computed labels: no merge, split, deletion or hiding (Undo brings them back)"
            )
            discard.on_click(lambda _: apply_action(model, "discard_edits"))
    with tabs.add_tab("Instances"):
        pick = gui.add_dropdown("Select", (NO_SELECTION,), initial_value=NO_SELECTION)
        pick.on_update(lambda event: _pick_from_list(document, event.client, pick.value))
        name = gui.add_text("Name", initial_value="", disabled=True)
        table = gui.add_html("")
    with tabs.add_tab("Inspector"):
        inspector = InspectorPanel.build(gui, document, controls.go_to_view)
    panels = Gui(document, selection, buttons["undo"], buttons["redo"], table, pick, name, inspector, edits, discard)
    name.on_update(lambda event: panels.rename_selected(event.client, name.value))
    return panels


def _mode_label(mode: RenderMode) -> str:
    return next(label for label, value in MODES.items() if value == mode)


def _label(document: SceneDocument, instance_id: int) -> str:
    """A dropdown entry: unique (the id leads), readable (the name follows)."""
    return f"{instance_id}: {document.instance_name(instance_id)}"


def _selection_text(document: SceneDocument, state: EditState) -> str:
    if not state.selected:
        return "**Selection:** nothing (click an object)"
    counts = document.instance_counts(state)
    # names on their own line, at most three: the panel is ~300 px wide and cuts longer lines off
    names = ", ".join(_label(document, i) for i in sorted(state.selected)[:3]) + (" ..." if len(state.selected) > 3 else "")
    total = sum(counts.get(i, 0) for i in state.selected)
    return f"**Selection:** {len(state.selected)} instance(s) · {total:,} Gaussians  \n{names}"


def _instance_table(document: SceneDocument, state: EditState) -> str:
    """Colour, id, name, #Gaussians, #views of every live instance; the selected ones in bold."""
    model = document.model
    counts = document.instance_counts(state)
    prototypes = document.prototypes(state)
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
            f'<td>{instance_id}</td><td style="overflow-wrap:anywhere">{html.escape(document.instance_name(instance_id))}</td>'
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


def _show_unassigned(document: SceneDocument, controls: ViewerControls, show: bool) -> None:
    document.show_unassigned = show
    controls.redraw()


def _pick_from_list(document: SceneDocument, client: viser.ClientHandle | None, value: str) -> None:
    if client is None or value == NO_SELECTION:  # a programmatic update, or the placeholder entry
        return
    instance_id = int(value.split(":", 1)[0])
    if document.model.state.selected != frozenset({instance_id}):
        document.model.click(instance_id)


def _ids_only_in_ply(with_ids: viser.GuiCheckboxHandle, file_format: ExportFormat) -> None:
    """The other formats have no place for an id column: its checkbox is cleared and disabled for them."""
    if file_format != "ply":
        with_ids.value = False
    with_ids.disabled = file_format != "ply"  # last: a tab that sees it disabled sees it cleared


def _export(
    document: SceneDocument, client: viser.ClientHandle | None, selection_only: bool, with_ids: bool, file_format: ExportFormat
) -> None:
    if client is None:
        return
    # gsplat's compressed writer loops in Python (~12 s for 200k Gaussians on 2 cores): show that it works
    busy = client.add_notification("Exporting", f"writing {file_format}", loading=True, with_close_button=False)
    try:
        export = document.export(selection_only, with_ids, file_format)
    except (ExportError, OSError) as error:
        client.add_notification("Export failed", str(error), color="red", auto_close_seconds=8.0)
        return
    finally:
        busy.remove()
    client.send_file_download(export.path.name, export.path.read_bytes(), save_immediately=True)
    left_out = f" ({export.left_out:,} {LEFT_OUT[file_format]} left out)" if export.left_out else ""
    client.add_notification(
        "Exported",
        f"{export.count:,} Gaussians{left_out} to {export.path} (also downloaded); what it holds: {export.record.name}",
        auto_close_seconds=8.0,
    )

"""A1111's `modules.scripts_auto_postprocessing`: the postprocessing scripts named in the
`postprocessing_enable_in_main_ui` setting also in txt2img and img2img, as always-on scripts whose
controls are the script's ui() and whose `postprocess_image` runs its process() on each generated
picture; its pp.info goes into the picture's infotext (p.extra_generation_params). Read when the
script runners are built (start, Reload UI), as in A1111."""

from __future__ import annotations

from modules import scripts, scripts_postprocessing, shared


class ScriptPostprocessingForMainUI(scripts.Script):
    def __init__(self, script_postproc):
        self.script: scripts_postprocessing.ScriptPostprocessing = script_postproc
        self.postprocessing_controls = None

    def title(self):
        return self.script.name

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        self.postprocessing_controls = self.script.ui() or {}
        return list(self.postprocessing_controls.values())

    def postprocess_image(self, p, script_pp, *args):
        args_dict = dict(zip(self.postprocessing_controls or {}, args))
        pp = scripts_postprocessing.PostprocessedImage(script_pp.image)
        pp.info = {}
        self.script.process(pp, **args_dict)
        p.extra_generation_params.update(pp.info)
        script_pp.image = pp.image


def create_auto_preprocessing_script_data():
    """ScriptClassData rows (their script_class makes the wrapper) for the enabled scripts."""
    found = []
    known = scripts.current_postprocessing_scripts_data()
    for name in getattr(shared.opts, "postprocessing_enable_in_main_ui", None) or []:
        data = next((d for d in known if getattr(d.script_class, "name", None) == name), None)
        if data is None:
            continue

        def make(data=data):
            wrapper = ScriptPostprocessingForMainUI(data.script_class())
            wrapper.script.filename = data.path
            return wrapper

        found.append(scripts.ScriptClassData(script_class=make, path=data.path, basedir=data.basedir,
                                             module=data.module))
    return found

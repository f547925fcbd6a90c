"""Placeholder for SageMaker Debugger (smdebug), which this image does not install.

This folder is on sys.path *after* site-packages (docker/Dockerfile writes a .pth
file), so a real smdebug that a user installs takes precedence; without one, `import
smdebug` fails here with the reason instead of a bare "No module named 'smdebug'".
It raises ImportError, so `try: import smdebug ... except ImportError:` still works.
"""

raise ImportError(
    "smdebug (SageMaker Debugger) is not installed in this image: smdebug 1.0.34, the "
    "last release, breaks under numpy 2 (it calls ndarray.tostring, removed in numpy 2) "
    "and needs a C compiler to install (its pyinstrument-cext dependency), which this "
    "image leaves out. Either remove the debugger hook from your script "
    "(smd.Hook.create_from_json_file() and hook.register_module/set_mode/record_tensor_value "
    "calls; pass debugger_hook_config=False to the estimator), or build an image FROM "
    "this one that installs gcc, then 'numpy<2' smdebug==1.0.34 requests pandas psutil."
)

#!/bin/sh
# start_anchor.sh torchserve|mms-toolkit: start one of AWS's stacks as its image would.
set -eu
case "${1:-}" in
  torchserve)
    exec python -c "from sagemaker_pytorch_serving_container import serving; serving.main()" ;;
  mms-toolkit)
    export PYTHONPATH=/opt/anchors${PYTHONPATH:+:$PYTHONPATH}
    exec python -c "from sagemaker_inference import model_server; model_server.start_model_server(handler_service='mms_toolkit_handler:handle')" ;;
  *)
    echo "usage: start_anchor.sh torchserve|mms-toolkit" >&2; exit 2 ;;
esac

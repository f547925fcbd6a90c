"""MMS entry point for AWS's PyTorch toolkit handler (sagemaker-pytorch-inference).

MMS calls handle(data, context) in each worker, first with data=None to initialise;
the toolkit's HandlerService then loads the user's inference.py from
/opt/ml/model/code and runs its model_fn / input_fn / predict_fn / output_fn.
"""

_service = None


def handle(data, context):
    global _service
    if _service is None:
        from sagemaker_pytorch_serving_container.handler_service import HandlerService

        _service = HandlerService()
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)

"""Running a trained model: batches and probabilities, streaming CSV prediction, the ONNX backend."""

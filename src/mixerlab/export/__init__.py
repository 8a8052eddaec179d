"""Deployable files from any model: ONNX (fp32, int8) and AOTInductor packages (.pt2), each checked
against PyTorch when written, and loadable back as models for eval and predict. Needs the export extra
(`pip install 'mixerlab[export]'`) for ONNX."""

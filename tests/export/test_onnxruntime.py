"""export.onnxruntime: the exported ONNX model of a 20-step seed CNN, run in
onnxruntime on MNIST's 10,000 test images, gives dmnist's predictions and
logits within 1e-4 of dmnist's own forward pass (dmnist-export --dump-logits)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exportlib import WORK, export, fail, mnist_test, need  # noqa: E402

np = need("numpy", "numpy")
onnx = need("onnx", "onnx")
ort = need("onnxruntime", "onnxruntime")

model = os.path.join(WORK, "model.onnx")
ref_path = os.path.join(WORK, "logits-onnx.npy")
export("-o", model, "--dump-logits", ref_path)

m = onnx.load(model)
onnx.checker.check_model(m, full_check=True)  # schema, opset, shapes
print("onnx.checker: ok; nodes: " + ", ".join(n.op_type for n in m.graph.node))
outs = [o.name for o in m.graph.output]
if outs != ["logits", "probabilities"]:
    fail("graph outputs %s, expected logits, probabilities" % outs)

img, lab, n = mnist_test()
x = (np.frombuffer(img, np.uint8).reshape(n, 1, 28, 28).astype(np.float32) / np.float32(255.0))
labels = np.frombuffer(lab, np.uint8).astype(np.int64)
so = ort.SessionOptions()
so.intra_op_num_threads = 2
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
logits, probs = sess.run(None, {"input": x})
ref = np.load(ref_path)
if logits.shape != ref.shape:
    fail("onnxruntime logits %s, dmnist %s" % (logits.shape, ref.shape))
diff = float(np.abs(logits - ref).max())
same = int((logits.argmax(1) == ref.argmax(1)).sum())
acc_ort = float((logits.argmax(1) == labels).mean())
acc_dm = float((ref.argmax(1) == labels).mean())
psum = float(np.abs(probs.sum(1) - 1).max())
print("onnxruntime %s: max |logit - dmnist| = %.3g; same prediction on %d of %d; "
      "accuracy onnxruntime %.4f, dmnist %.4f; max |sum(probabilities) - 1| = %.2g"
      % (ort.__version__, diff, same, n, acc_ort, acc_dm, psum))
if same != n:
    fail("%d predictions differ" % (n - same))
if not diff <= 1e-4:
    fail("logits differ by %.3g > 1e-4" % diff)
if not psum <= 1e-5:
    fail("probabilities do not sum to 1 (%.3g)" % psum)
print("ok")

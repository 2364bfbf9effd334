"""export.onnxruntime: the exported ONNX model of a 20-step seed CNN, run in
onnxruntime on MNIST's 10,000 test images, gives dmnist's predictions and
logits within 1e-4 of dmnist's own forward pass (dmnist-export --dump-logits).
The same for tests/export/variants.ini (60 steps): the layer options the seed
CNN does not use (asymmetric 'same' pads, strides, no bias, overlapping
pooling, a relu layer, dense on a 4-D tensor)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exportlib import CKPT, CONFIG, WORK, export, fail, mnist_test, need, train  # noqa: E402

np = need("numpy", "numpy")
onnx = need("onnx", "onnx")
ort = need("onnxruntime", "onnxruntime")

img, lab, n = mnist_test()
x = (np.frombuffer(img, np.uint8).reshape(n, 1, 28, 28).astype(np.float32) / np.float32(255.0))
labels = np.frombuffer(lab, np.uint8).astype(np.int64)


def check(name, ckpt, config):
    model = os.path.join(WORK, name + ".onnx")
    ref_path = os.path.join(WORK, name + "-logits-onnx.npy")
    export("-o", model, "--dump-logits", ref_path, ckpt=ckpt, config=config)
    m = onnx.load(model)
    onnx.checker.check_model(m, full_check=True)  # schema, opset, shape inference
    print("onnx.checker: ok; nodes: " + ", ".join(nd.op_type for nd in m.graph.node))
    outs = [o.name for o in m.graph.output]
    if outs != ["logits", "probabilities"]:
        fail("graph outputs %s, expected logits, probabilities" % outs)
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
    print("%s: onnxruntime %s: max |logit - dmnist| = %.3g; same prediction on %d of %d; "
          "accuracy onnxruntime %.4f, dmnist %.4f; max |sum(probabilities) - 1| = %.2g"
          % (name, ort.__version__, diff, same, n, acc_ort, acc_dm, psum))
    if same != n:
        fail("%s: %d predictions differ" % (name, n - same))
    if not diff <= 1e-4:
        fail("%s: logits differ by %.3g > 1e-4" % (name, diff))
    if not psum <= 1e-5:
        fail("%s: probabilities do not sum to 1 (%.3g)" % (name, psum))


check("model", CKPT, CONFIG)
variants = os.path.join(os.path.dirname(os.path.abspath(__file__)), "variants.ini")
train(variants, os.path.join(WORK, "ckpt-variants"))
check("variants", os.path.join(WORK, "ckpt-variants"), variants)
print("ok")

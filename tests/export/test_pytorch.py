"""export.pytorch: the safetensors export of a 20-step seed CNN, loaded with
the safetensors package into the same architecture written in PyTorch
(strict load_state_dict: every name and shape must match), classifies MNIST's
10,000 test images like dmnist: equal test accuracy (within 0.01%), and the
predictions and logits compared with dmnist's own forward pass."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exportlib import WORK, export, fail, mnist_test, need, read_npy  # noqa: E402

torch = need("torch", "python3-torch (Debian, seen through --system-site-packages)")
need("safetensors", "safetensors")
from safetensors.torch import load_file  # noqa: E402

nn = torch.nn


class SeedCNN(nn.Module):
    """configs/cnn.ini's layers, attribute names = its [layer.*] names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(0.25)
        self.flatten = nn.Flatten()
        self.dense1 = nn.Linear(9216, 256)
        self.drop2 = nn.Dropout(0.5)
        self.logits = nn.Linear(256, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.drop1(self.pool(x))
        x = torch.relu(self.dense1(self.flatten(x)))
        return self.logits(self.drop2(x))


torch.set_num_threads(2)
path = os.path.join(WORK, "model.safetensors")
ref_path = os.path.join(WORK, "logits-torch.npy")
export("--format", "safetensors", "-o", path, "--dump-logits", ref_path)

state = load_file(path)
print("safetensors: " + ", ".join("%s %s" % (k, tuple(v.shape)) for k, v in state.items()))
net = SeedCNN()
net.load_state_dict(state, strict=True)
net.eval()

img, lab, n = mnist_test()
x = torch.frombuffer(bytearray(img), dtype=torch.uint8).reshape(n, 1, 28, 28).float() / 255.0
labels = torch.frombuffer(bytearray(lab), dtype=torch.uint8).long()
with torch.no_grad():
    logits = torch.cat([net(x[i:i + 500]) for i in range(0, n, 500)])
raw, rows, cols = read_npy(ref_path)
ref = torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(rows, cols)
if tuple(logits.shape) != (rows, cols):
    fail("PyTorch logits %s, dmnist (%d, %d)" % (tuple(logits.shape), rows, cols))
acc_pt = (logits.argmax(1) == labels).float().mean().item()
acc_dm = (ref.argmax(1) == labels).float().mean().item()
same = int((logits.argmax(1) == ref.argmax(1)).sum())
diff = (logits - ref).abs().max().item()
print("PyTorch %s: test accuracy %.4f, dmnist %.4f; same prediction on %d of %d; max |logit - dmnist| = %.3g"
      % (torch.__version__, acc_pt, acc_dm, same, n, diff))
if abs(acc_pt - acc_dm) > 1e-4 + 1e-7:
    fail("accuracy differs by more than 0.01%")
if diff > 1e-3:
    fail("logits differ by %.3g: the weights were not loaded as dmnist uses them" % diff)
print("ok")

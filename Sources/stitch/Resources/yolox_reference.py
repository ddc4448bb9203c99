"""YOLOX-Nano reference: YOLOX's ONNX demo (demo/ONNXRuntime/onnx_inference.py and
yolox/utils/demo_utils.py) on onnxruntime, shared by make_fixtures.py and `stitch bench`.

preprocess: cv2 letterbox (INTER_LINEAR, grey 114, top-left), BGR, raw 0..255 planes.
postprocess: grid/stride decoding, boxes divided by the letterbox ratio, class-aware
NMS with YOLOX's numpy `nms` (inclusive-pixel areas), then boxes clipped to the image.
"""
import cv2
import numpy as np
import onnxruntime

INPUT_SIZE = 416
STRIDES = (8, 16, 32)


def session(onnx_path, threads):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def preprocess(image_bgr, size=INPUT_SIZE):
    padded = np.ones((size, size, 3), dtype=np.uint8) * 114
    r = min(size / image_bgr.shape[0], size / image_bgr.shape[1])
    resized = cv2.resize(image_bgr, (int(image_bgr.shape[1] * r), int(image_bgr.shape[0] * r)),
                         interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    padded[: int(image_bgr.shape[0] * r), : int(image_bgr.shape[1] * r)] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32), r


def demo_postprocess(outputs, size=INPUT_SIZE):
    grids, expanded_strides = [], []
    for stride in STRIDES:
        cells = size // stride
        xv, yv = np.meshgrid(np.arange(cells), np.arange(cells))
        grid = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(grid)
        expanded_strides.append(np.full((*grid.shape[:2], 1), stride))
    grids = np.concatenate(grids, 1)
    expanded_strides = np.concatenate(expanded_strides, 1)
    outputs = outputs.copy()
    outputs[..., :2] = (outputs[..., :2] + grids) * expanded_strides
    outputs[..., 2:4] = np.exp(outputs[..., 2:4]) * expanded_strides
    return outputs


def nms(boxes, scores, nms_thr):
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= nms_thr)[0] + 1]
    return keep


def multiclass_nms_class_aware(boxes, scores, nms_thr, score_thr):
    detections = []
    for c in range(scores.shape[1]):
        valid = scores[:, c] > score_thr
        if valid.sum() == 0:
            continue
        valid_scores, valid_boxes = scores[valid, c], boxes[valid]
        for k in nms(valid_boxes, valid_scores, nms_thr):
            detections.append((c, float(valid_scores[k]), valid_boxes[k].tolist()))
    return sorted(detections, key=lambda d: -d[1])


def postprocess(raw, ratio, image_shape, score_thr=0.3, nms_thr=0.45):
    predictions = demo_postprocess(raw[None])[0]
    boxes = predictions[:, :4]
    scores = predictions[:, 4:5] * predictions[:, 5:]
    boxes_xyxy = np.ones_like(boxes)
    boxes_xyxy[:, 0] = boxes[:, 0] - boxes[:, 2] / 2.0
    boxes_xyxy[:, 1] = boxes[:, 1] - boxes[:, 3] / 2.0
    boxes_xyxy[:, 2] = boxes[:, 0] + boxes[:, 2] / 2.0
    boxes_xyxy[:, 3] = boxes[:, 1] + boxes[:, 3] / 2.0
    boxes_xyxy /= ratio
    height, width = image_shape[:2]
    return [(c, score, [min(max(box[0], 0), width), min(max(box[1], 0), height), min(max(box[2], 0), width), min(max(box[3], 0), height)])
            for c, score, box in multiclass_nms_class_aware(boxes_xyxy, scores, nms_thr, score_thr)]


def detect(sess, image_path, score_thr=0.3, nms_thr=0.45):
    """(raw [3549, 85], ratio, letterboxed input, detections) for one image file."""
    image = cv2.imread(image_path)
    pixels, ratio = preprocess(image)
    raw = sess.run(None, {sess.get_inputs()[0].name: pixels[None]})[0][0]
    return raw, ratio, pixels, postprocess(raw, ratio, image.shape, score_thr, nms_thr)

"""The docparse kind's words on the console, in English and Simplified Chinese: its name
and its fieldset on the add-task page."""

from __future__ import annotations

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "kind.docparse": "document parse",
        "docparse.form": "Document parsing",
        "docparse.engine": "Engine",
        "docparse.engine_auto": "auto (MinerU for scanned pages when this cluster has it)",
        "docparse.engine_lite": "lite (built in, CPU)",
        "docparse.engine_mineru": "MinerU",
        "docparse.ocr": "OCR",
        "docparse.ocr_auto": "auto (scanned pages only)",
        "docparse.ocr_force": "every page",
        "docparse.ocr_off": "off",
        "docparse.langs": "OCR languages:",
        "docparse.lang_eng": "English",
        "docparse.lang_chi_sim": "Simplified Chinese",
        "docparse.formats": "Outputs:",
        "docparse.format_markdown": "Markdown",
        "docparse.format_content_list": "content list (JSON)",
        "docparse.pages": "Pages",
        "docparse.pages_placeholder": "all pages, or e.g. 1-5,8,10-",
        "docparse.hint": (
            "A PDF, or a PNG/JPEG/TIFF scan. Extracted figures are always written to images/."
        ),
    },
    "zh-CN": {
        "kind.docparse": "文档解析",
        "docparse.form": "文档解析",
        "docparse.engine": "引擎",
        "docparse.engine_auto": "自动（集群有 MinerU 时用它处理扫描页）",
        "docparse.engine_lite": "lite（内置，CPU）",
        "docparse.engine_mineru": "MinerU",
        "docparse.ocr": "OCR 文字识别",
        "docparse.ocr_auto": "自动（仅扫描页）",
        "docparse.ocr_force": "所有页面",
        "docparse.ocr_off": "关闭",
        "docparse.langs": "OCR 语言：",
        "docparse.lang_eng": "英文",
        "docparse.lang_chi_sim": "简体中文",
        "docparse.formats": "输出：",
        "docparse.format_markdown": "Markdown",
        "docparse.format_content_list": "内容列表（JSON）",
        "docparse.pages": "页码",
        "docparse.pages_placeholder": "全部页面，或例如 1-5,8,10-",
        "docparse.hint": "PDF，或 PNG/JPEG/TIFF 扫描图片。提取的图片总是写入 images/。",
    },
}

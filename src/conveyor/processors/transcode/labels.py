"""The transcode kind's words on the console, in English and Simplified Chinese: its name,
its fieldset on the add-task page, and a label and a description for each built-in type and
built-in streaming group (``ttype.<type>``, ``tdesc.<type>``; user-defined types show
their name and description)."""

from __future__ import annotations

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "kind.transcode": "transcode",
        "ttype.mp4_standard": "MP4 standard (480p)",
        "ttype.mp4_smooth": "MP4 smooth (360p)",
        "ttype.hdlbr_h265": "HD H.265, low bitrate",
        "ttype.lcd_h265": "H.265 for LCD screens",
        "ttype.h265_mute": "H.265 without audio",
        "ttype.custom_mute_preview": "Muted preview clip",
        "ttype.thumbnail": "Thumbnail (JPG)",
        "ttype.hls": "HLS streaming ladder",
        "ttype.dash": "DASH streaming ladder",
        "ttype.cmaf": "CMAF ladder (HLS + DASH)",
        "tdesc.mp4_standard": "H.264/AAC MP4 in 848×480 for universal playback.",
        "tdesc.mp4_smooth": "H.264/AAC MP4 in 640×360 at a low bitrate for slow networks.",
        "tdesc.hdlbr_h265": "Up to 1080p at about half of H.264's bitrate.",
        "tdesc.lcd_h265": "Up to 720p, tuned for LCD panels.",
        "tdesc.h265_mute": "Up to 720p with no audio track, for muted autoplay and video walls.",
        "tdesc.custom_mute_preview": "A short muted H.264 clip from the start of the video.",
        "tdesc.thumbnail": "A JPEG still from early in the video, fitted in 640×360.",
        "tdesc.hls": "master.m3u8 with 1080p to 234p H.264 renditions and AAC audio in "
        "4 s segments; rungs above the input are left out.",
        "tdesc.dash": "manifest.mpd with 1080p to 234p H.264 renditions and AAC audio in "
        "4 s fMP4 segments; rungs above the input are left out.",
        "tdesc.cmaf": "One set of fMP4 segments served by both manifest.mpd and master.m3u8.",
        "transcode.types": "Transcode types",
        "transcode.types_hint": "The defaults are ticked. Pick at least one.",
    },
    "zh-CN": {
        "kind.transcode": "转码",
        "ttype.mp4_standard": "标清 MP4（480p）",
        "ttype.mp4_smooth": "流畅 MP4（360p）",
        "ttype.hdlbr_h265": "高清低码率 H.265",
        "ttype.lcd_h265": "LCD 优化 H.265",
        "ttype.h265_mute": "静音 H.265",
        "ttype.custom_mute_preview": "静音预览",
        "ttype.thumbnail": "缩略图（JPG）",
        "ttype.hls": "HLS 自适应码率",
        "ttype.dash": "DASH 自适应码率",
        "ttype.cmaf": "CMAF 自适应码率（HLS + DASH）",
        "tdesc.mp4_standard": "848×480 的 H.264/AAC MP4，几乎所有设备都能播放。",
        "tdesc.mp4_smooth": "640×360 的低码率 H.264/AAC MP4，适合慢速网络。",
        "tdesc.hdlbr_h265": "最高 1080p，码率约为 H.264 的一半。",
        "tdesc.lcd_h265": "最高 720p，针对 LCD 屏幕调校。",
        "tdesc.h265_mute": "最高 720p，不含音轨，适合静音自动播放和视频墙。",
        "tdesc.custom_mute_preview": "取自视频开头的一段静音 H.264 短片。",
        "tdesc.thumbnail": "取自视频前段的一张 JPEG 静帧，缩放到 640×360 以内。",
        "tdesc.hls": "master.m3u8，含 1080p 至 234p 的 H.264 码率档和 AAC 音频，"
        "4 秒一个分片；高于输入分辨率的档位不生成。",
        "tdesc.dash": "manifest.mpd，含 1080p 至 234p 的 H.264 码率档和 AAC 音频，"
        "4 秒一个 fMP4 分片；高于输入分辨率的档位不生成。",
        "tdesc.cmaf": "一套 fMP4 分片，同时供 manifest.mpd 和 master.m3u8 使用。",
        "transcode.types": "转码类型",
        "transcode.types_hint": "已勾选默认类型。至少选择一种。",
    },
}

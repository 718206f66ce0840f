"""What reading keywords costs at indexing (indexer/xmp.py read_metadata), per image, on camera-sized JPEGs.

Three kinds of photo: no metadata, XMP and IPTC embedded (as a camera app or a Lightroom export leaves them), and
embedded plus a sidecar (photo.jpg.xmp). It prints the milliseconds per image in one thread and the images/s of
the keywords pass's thread pool (one thread per core), beside the indexing rates bench/indexing.py measures.

    python -m bench.xmp [--images 50]
"""

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import exiv2
import numpy as np
from PIL import Image

from bench.smoke import announce, pick
from indexer.models.cpu import cpu_line
from indexer.xmp import read_metadata
from tests.support.photos import photo

SIZE = pick((4000, 3000), (64, 48))  # a 12 MP camera photo


def embed_metadata(path: Path, seed: int) -> None:
    image = exiv2.ImageFactory.open(str(path))
    image.readMetadata()
    xmp, iptc = image.xmpData(), image.iptcData()
    bag = exiv2.XmpArrayValue(exiv2.TypeId.xmpBag)
    for keyword in ("holiday", "beach", f"roll {seed}", "family"):
        bag.read(keyword)
        iptc.add(exiv2.IptcKey("Iptc.Application2.Keywords"), exiv2.StringValue(keyword))
    xmp.add(exiv2.XmpKey("Xmp.dc.subject"), bag)
    xmp["Xmp.dc.title"] = exiv2.LangAltValue(f'lang="x-default" Photo {seed}')
    image.setXmpData(xmp)
    image.setIptcData(iptc)
    image.writeMetadata()


def sidecar(path: Path) -> Path:
    side = path.with_name(path.name + ".xmp")
    side.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag>'
        "<rdf:li>harbour</rdf:li><rdf:li>boats</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF>"
        "</x:xmpmeta>"
    )
    return side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=pick(50, 6))
    args = parser.parse_args()
    print(cpu_line())
    announce()
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-xmp-") as tmp:
        folder = Path(tmp)
        base = folder / "base.jpg"
        noise = np.random.default_rng(0).integers(0, 40, (*SIZE[::-1], 3), dtype=np.uint8)
        Image.fromarray(np.clip(np.asarray(photo(1, SIZE), np.int16) + noise, 0, 255).astype(np.uint8)).save(
            base, quality=92
        )
        print(f"xmp: {args.images} JPEGs of {SIZE[0]}x{SIZE[1]} ({base.stat().st_size / 2**20:.1f} MB) per kind")
        kinds: dict[str, list[list[Path]]] = {"no metadata": [], "embedded": [], "embedded + sidecar": []}
        for n in range(args.images):
            for kind, files in kinds.items():
                path = folder / f"{kind.replace(' ', '-')}-{n}.jpg"
                path.write_bytes(base.read_bytes())
                if kind != "no metadata":
                    embed_metadata(path, n)
                files.append([path, sidecar(path)] if kind.endswith("sidecar") else [path])
        for kind, files in kinds.items():
            started = time.perf_counter()
            found = [read_metadata(group) for group in files]
            one = (time.perf_counter() - started) / len(files)
            with ThreadPoolExecutor() as pool:
                started = time.perf_counter()
                list(pool.map(read_metadata, files))
                pooled = len(files) / (time.perf_counter() - started)
            keywords = np.mean([len(m.keywords) for m in found])
            print(
                f"  {kind}: {one * 1000:.2f} ms/image in one thread, {pooled:,.0f} images/s in the pool "
                f"({keywords:.0f} keywords each)",
                flush=True,
            )


if __name__ == "__main__":
    main()

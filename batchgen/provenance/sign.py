"""The team's C2PA signature on an exported copy (`export --sign-cert --sign-key`).

A copy that carries a provider's manifest is signed over its original bytes with that
manifest as its parent ingredient (the EDIT intent: CREATE would drop it), so the
provider's manifest stays valid inside the new one; a copy without one is signed with a
new manifest declaring `trainedAlgorithmicMedia` (CREATE). Either way the manifest holds
a batchgen assertion (`org.batchgen.export`: campaign, job, model, task id, cost).
"""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from batchgen.errors import BatchgenError, UsageProblem
from batchgen.provenance.marks import OFFLINE, mime_type


class SigningProblem(UsageProblem):
    """The team's certificate or key cannot sign: one line naming which (exit 2)."""


class SigningUnavailable(BatchgenError):
    """c2pa-python or cryptography is not installed."""


def _installed() -> Any:
    try:
        import c2pa
        import cryptography  # noqa: F401
    except ImportError:
        raise SigningUnavailable(
            "signing needs c2pa-python and cryptography: pip install 'batchgen[provenance]'"
        ) from None
    return c2pa


@dataclass
class TeamSigner:
    """A checked certificate chain and key, ready to sign copies."""

    chain: bytes
    key: bytes
    alg: str
    issuer: str

    @classmethod
    def load(cls, cert_path: str | Path, key_path: str | Path) -> TeamSigner:
        """Read and check `--sign-cert` (leaf first, then its CAs) and `--sign-key`: a
        certificate that is not PEM, expired, not yet valid or self-signed, a key that is
        not PEM or does not match: SigningProblem naming the file."""
        _installed()
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        cert_name, key_name = f"--sign-cert {cert_path}", f"--sign-key {key_path}"
        try:
            chain = Path(cert_path).read_bytes()
            certificates = x509.load_pem_x509_certificates(chain)
        except OSError as e:
            raise SigningProblem(f"{cert_name}: {e.strerror}") from None
        except ValueError:
            raise SigningProblem(f"{cert_name}: not a PEM certificate") from None
        try:
            key_pem = Path(key_path).read_bytes()
            key = serialization.load_pem_private_key(key_pem, password=None)
        except OSError as e:
            raise SigningProblem(f"{key_name}: {e.strerror}") from None
        except (ValueError, TypeError):
            raise SigningProblem(f"{key_name}: not an unencrypted PEM private key") from None
        leaf = certificates[0]
        now = datetime.datetime.now(datetime.UTC)
        if leaf.not_valid_after_utc < now:
            raise SigningProblem(
                f"{cert_name}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
            )
        if leaf.not_valid_before_utc > now:
            raise SigningProblem(
                f"{cert_name}: the certificate is valid only from "
                f"{leaf.not_valid_before_utc:%Y-%m-%d}"
            )
        if leaf.issuer == leaf.subject:
            raise SigningProblem(
                f"{cert_name}: a self-signed certificate, which C2PA refuses: give a "
                "certificate signed by a CA, followed by that CA's"
            )
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, public) != leaf.public_key().public_bytes(
            der, public
        ):
            raise SigningProblem(f"{key_name}: the key does not match the certificate {cert_path}")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            alg = {256: "es256", 384: "es384", 521: "es512"}.get(key.curve.key_size)
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            alg = "ed25519"
        elif isinstance(key, rsa.RSAPrivateKey):
            alg = "ps256"
        else:
            alg = None
        if alg is None:
            raise SigningProblem(f"{key_name}: a key C2PA cannot sign with (use EC P-256)")
        organizations = leaf.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
        issuer = str(organizations[0].value) if organizations else leaf.subject.rfc4514_string()
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(chain=chain, key=pkcs8, alg=alg, issuer=issuer)

    def sign(
        self,
        source: Path,
        dest: Path,
        assertion: dict[str, Any],
        parent: bool,
        suffix: str | None = None,
    ) -> None:
        """Write `source` signed into `dest` (a new file): with `parent`, its manifest
        kept as the parent ingredient; else a new manifest declaring AI generation.
        `suffix`: the format's extension when `source`'s is not it."""
        c2pa = _installed()
        mime = mime_type(f"file{suffix}" if suffix else str(source))
        manifest = {
            "claim_generator_info": [{"name": "batchgen", "version": _version()}],
            "title": source.name if suffix is None else f"result{suffix}",
            "assertions": [{"label": "org.batchgen.export", "data": assertion}],
        }
        settings = {**OFFLINE, "builder": {"thumbnail": {"enabled": False}}}
        context = c2pa.Context.from_dict(settings)
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.alg, self.chain, self.key, None))
        builder = c2pa.Builder.from_json(json.dumps(manifest), context)
        try:
            with open(source, "rb") as original:
                if parent:
                    builder.set_intent(c2pa.C2paBuilderIntent.EDIT)
                    ingredient = {"title": manifest["title"], "relationship": "parentOf"}
                    builder.add_ingredient(json.dumps(ingredient), mime, original)
                    original.seek(0)
                else:
                    builder.set_intent(
                        c2pa.C2paBuilderIntent.CREATE,
                        c2pa.C2paDigitalSourceType.TRAINED_ALGORITHMIC_MEDIA,
                    )
                with open(dest, "wb") as out:
                    builder.sign(signer, mime, original, out)
        except c2pa.C2paError as e:
            raise SigningProblem(f"could not sign {source.name}: {e}") from None
        finally:
            signer.close()
            builder.close()


def _version() -> str:
    try:
        return version("batchgen")
    except PackageNotFoundError:
        return "0"


def sign_bytes(data: bytes, mime: str, chain: bytes, key: bytes, manifest: dict[str, Any]) -> bytes:
    """`data` signed with a new manifest (CREATE, trainedAlgorithmicMedia): how the
    sandbox signs its media as a provider would."""
    c2pa = _installed()
    context = c2pa.Context.from_dict({**OFFLINE, "builder": {"thumbnail": {"enabled": False}}})
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo("es256", chain, key, None))
    builder = c2pa.Builder.from_json(json.dumps(manifest), context)
    try:
        builder.set_intent(
            c2pa.C2paBuilderIntent.CREATE, c2pa.C2paDigitalSourceType.TRAINED_ALGORITHMIC_MEDIA
        )
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
        return out.getvalue()
    finally:
        signer.close()
        builder.close()

"""The guidelines the rules rest on (spec: "cite name and year in cards")."""

from __future__ import annotations

from cds_service.clinical.model import Citation

ACP_APS_2007 = Citation(
    "acp-aps-2007",
    "ACP/APS: Diagnosis and treatment of low back pain (Chou et al., Ann Intern Med 147:478)",
    "2007",
    "https://doi.org/10.7326/0003-4819-147-7-200710020-00006",
)
ACP_2011 = Citation(
    "acp-2011",
    "ACP high-value care advice: Diagnostic imaging for low back pain (Ann Intern Med 154:181)",
    "2011",
    "https://doi.org/10.7326/0003-4819-154-3-201102010-00008",
)
ACP_2017 = Citation(
    "acp-2017",
    "ACP: Noninvasive treatments for acute, subacute, and chronic low back pain (Qaseem et al.)",
    "2017",
    "https://doi.org/10.7326/M16-2367",
)
ACR_LBP_2021 = Citation(
    "acr-lbp-2021",
    "ACR Appropriateness Criteria: Low Back Pain (variants 1-7)",
    "2021 revision",
    "https://acsearch.acr.org/list",
)
ACR_SACROILIITIS_2016 = Citation(
    "acr-sacroiliitis-2016",
    "ACR Appropriateness Criteria: Chronic Back Pain, Suspected Sacroiliitis/Spondyloarthropathy",
    "2016",
    "https://acsearch.acr.org/list",
)
NICE_NG59 = Citation(
    "nice-ng59",
    "NICE NG59: Low back pain and sciatica in over 16s: assessment and management",
    "2016, updated 2020",
    "https://www.nice.org.uk/guidance/ng59",
)
NICE_QS155 = Citation("nice-qs155", "NICE QS155: Low back pain", "2017", "https://www.nice.org.uk/guidance/qs155")
CHOOSING_WISELY = Citation(
    "choosing-wisely-lbp",
    "Choosing Wisely (AAFP, ACR, ACP, NASS): Don't do imaging for low back pain within the first six weeks, "
    "unless red flags are present",
    "current list",
    "https://www.choosingwisely.org",
)
NICE_NG65 = Citation(
    "nice-ng65",
    "NICE NG65: Spondyloarthritis in over 16s: diagnosis and management (recognition and referral)",
    "2017",
    "https://www.nice.org.uk/guidance/ng65",
)
ASAS_2009 = Citation(
    "asas-2009",
    "ASAS classification criteria for axial spondyloarthritis (Rudwaleit et al., Ann Rheum Dis 68:777)",
    "2009",
)
ASAS_IBP_2009 = Citation("asas-ibp-2009", "ASAS inflammatory back pain criteria (Sieper et al.)", "2009")
EULAR_IMAGING_2015 = Citation(
    "eular-imaging-2015",
    "EULAR recommendations for the use of imaging in spondyloarthritis (Mandl et al., Ann Rheum Dis 74:1327)",
    "2015",
)
ASAS_EULAR_2022 = Citation(
    "asas-eular-2022", "ASAS-EULAR recommendations for the management of axial spondyloarthritis", "2022"
)

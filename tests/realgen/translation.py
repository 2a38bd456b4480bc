"""Image-to-image translation generators in the style of popular public code (our own code, small widths)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# ------------------------------------------------------------------------ anti-aliased (blur pool) net

class BlurPool(nn.Module):
    """Low-pass filter then subsample; the filter is a buffer repeated per channel, groups from the input."""

    def __init__(self, channels, filt_size=3, stride=2):
        super().__init__()
        self.stride, self.channels = stride, channels
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        filt = filt / torch.sum(filt)
        self.register_buffer("filt", filt[None, None, :, :].repeat((channels, 1, 1, 1)))
        self.pad = nn.ReflectionPad2d(1)

    def forward(self, inp):
        return F.conv2d(self.pad(inp), self.filt, stride=self.stride, groups=inp.shape[1])


class AntiAliasedResnet(nn.Module):
    def __init__(self, input_nc=3, output_nc=3, ngf=8, n_blocks=2):
        super().__init__()
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        model += [nn.Conv2d(ngf, ngf * 2, 3, padding=1), nn.InstanceNorm2d(ngf * 2), nn.ReLU(True),
                  BlurPool(ngf * 2)]
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * 2)]
        model += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ngf * 2, ngf, 3, padding=1),
                  nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input):
        return self.model(input)


class ResnetBlock(nn.Module):
    def __init__(self, dim, use_dropout=False, norm=nn.InstanceNorm2d):
        super().__init__()
        block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm(dim), nn.ReLU(True)]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


# ------------------------------------------------------------------------------------ U-GAT-IT style

class adaILN(nn.Module):
    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.Tensor(1, num_features, 1, 1))
        self.rho.data.fill_(0.9)

    def forward(self, input, gamma, beta):
        in_mean, in_var = torch.mean(input, dim=[2, 3], keepdim=True), torch.var(input, dim=[2, 3], keepdim=True)
        out_in = (input - in_mean) / torch.sqrt(in_var + self.eps)
        ln_mean, ln_var = torch.mean(input, dim=[1, 2, 3], keepdim=True), torch.var(input, dim=[1, 2, 3], keepdim=True)
        out_ln = (input - ln_mean) / torch.sqrt(ln_var + self.eps)
        out = self.rho.expand(input.shape[0], -1, -1, -1) * out_in + \
            (1 - self.rho.expand(input.shape[0], -1, -1, -1)) * out_ln
        return out * gamma.unsqueeze(2).unsqueeze(3) + beta.unsqueeze(2).unsqueeze(3)


class ResnetAdaILNBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.pad1, self.conv1 = nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False)
        self.norm1, self.relu1 = adaILN(dim), nn.ReLU(True)
        self.pad2, self.conv2 = nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False)
        self.norm2 = adaILN(dim)

    def forward(self, x, gamma, beta):
        out = self.relu1(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        out = self.norm2(self.conv2(self.pad2(out)), gamma, beta)
        return out + x


class UGATITGenerator(nn.Module):
    def __init__(self, input_nc=3, output_nc=3, ngf=8, n_blocks=2, img_size=16, light=True):
        super().__init__()
        self.n_blocks, self.light = n_blocks, light
        down = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=False), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        down += [nn.ReflectionPad2d(1), nn.Conv2d(ngf, ngf * 2, 3, 2, bias=False), nn.InstanceNorm2d(ngf * 2),
                 nn.ReLU(True)]
        mult = 2
        down += [ResnetBlock(ngf * mult, norm=nn.InstanceNorm2d)]
        self.DownBlock = nn.Sequential(*down)
        c = ngf * mult
        self.gap_fc = nn.Linear(c, 1, bias=False)
        self.gmp_fc = nn.Linear(c, 1, bias=False)
        self.conv1x1 = nn.Conv2d(c * 2, c, 1, 1, bias=True)
        self.relu = nn.ReLU(True)
        if light:
            fc = [nn.Linear(c, c, bias=False), nn.ReLU(True), nn.Linear(c, c, bias=False), nn.ReLU(True)]
        else:
            fc = [nn.Linear(img_size // mult * img_size // mult * c, c, bias=False), nn.ReLU(True),
                  nn.Linear(c, c, bias=False), nn.ReLU(True)]
        self.FC = nn.Sequential(*fc)
        self.gamma = nn.Linear(c, c, bias=False)
        self.beta = nn.Linear(c, c, bias=False)
        for i in range(n_blocks):
            setattr(self, "UpBlock1_" + str(i + 1), ResnetAdaILNBlock(c))
        up2 = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(c, ngf, 3, bias=False),
               nn.InstanceNorm2d(ngf), nn.ReLU(True), nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, bias=False),
               nn.Tanh()]
        self.UpBlock2 = nn.Sequential(*up2)

    def forward(self, input, return_cam=True):
        x = self.DownBlock(input)
        gap = F.adaptive_avg_pool2d(x, 1)
        gap_logit = self.gap_fc(gap.view(x.shape[0], -1))
        gap_weight = list(self.gap_fc.parameters())[0]
        gap = x * gap_weight.unsqueeze(2).unsqueeze(3)
        gmp = F.adaptive_max_pool2d(x, 1)
        gmp_logit = self.gmp_fc(gmp.view(x.shape[0], -1))
        gmp_weight = list(self.gmp_fc.parameters())[0]
        gmp = x * gmp_weight.unsqueeze(2).unsqueeze(3)
        cam_logit = torch.cat([gap_logit, gmp_logit], 1)
        x = self.relu(self.conv1x1(torch.cat([gap, gmp], 1)))
        heatmap = torch.sum(x, dim=1, keepdim=True)
        if self.light:
            x_ = F.adaptive_avg_pool2d(x, 1)
            x_ = self.FC(x_.view(x_.shape[0], -1))
        else:
            x_ = self.FC(x.view(x.shape[0], -1))
        gamma, beta = self.gamma(x_), self.beta(x_)
        for i in range(self.n_blocks):
            x = getattr(self, "UpBlock1_" + str(i + 1))(x, gamma, beta)
        out = self.UpBlock2(x)
        if return_cam:
            return out, cam_logit, heatmap
        return out


# ------------------------------------------------------------------------------- AnimeGAN style (GN)

class ConvNormLReLU(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1, groups=1, bias=False):
        super().__init__(nn.ReflectionPad2d(padding),
                         nn.Conv2d(in_ch, out_ch, kernel_size, stride, 0, groups=groups, bias=bias),
                         nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True),
                         nn.LeakyReLU(0.2, inplace=True))


class InvertedResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, expansion_ratio=2):
        super().__init__()
        self.use_res_connect = in_ch == out_ch
        bottleneck = int(round(in_ch * expansion_ratio))
        layers = [ConvNormLReLU(in_ch, bottleneck, kernel_size=1, padding=0)]
        layers.append(ConvNormLReLU(bottleneck, bottleneck, groups=bottleneck, bias=True))
        layers.append(nn.Conv2d(bottleneck, out_ch, kernel_size=1, padding=0, bias=False))
        layers.append(nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, input):
        out = self.layers(input)
        if self.use_res_connect:
            out = input + out
        return out


class AnimeGANv2Generator(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.block_a = nn.Sequential(ConvNormLReLU(3, c, kernel_size=7, padding=3),
                                     ConvNormLReLU(c, 2 * c, stride=2, padding=(0, 1, 0, 1)))
        self.block_c = nn.Sequential(ConvNormLReLU(2 * c, 2 * c), InvertedResBlock(2 * c, 2 * c))
        self.block_e = nn.Sequential(ConvNormLReLU(2 * c, c), ConvNormLReLU(c, c, kernel_size=7, padding=3))
        self.out_layer = nn.Sequential(nn.Conv2d(c, 3, kernel_size=1, stride=1, padding=0, bias=False), nn.Tanh())

    def forward(self, input, align_corners=True):
        out = self.block_a(input)
        half_size = out.size()[-2:]
        out = self.block_c(out)
        if align_corners:
            out = F.interpolate(out, half_size, mode="bilinear", align_corners=True)
        else:
            out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=False)
        out = F.interpolate(out, input.size()[-2:], mode="bilinear", align_corners=align_corners)
        out = self.block_e(out)
        return self.out_layer(out)


# ------------------------------------------------------------------------------------ CartoonGAN style

class CartoonGenerator(nn.Module):
    def __init__(self, nf=8, nb=2):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(3, nf, 7, 1, 3), nn.InstanceNorm2d(nf), nn.ReLU(True),
            nn.Conv2d(nf, nf * 2, 3, 2, 1), nn.Conv2d(nf * 2, nf * 2, 3, 1, 1), nn.InstanceNorm2d(nf * 2), nn.ReLU(True))
        self.resnet_blocks = nn.ModuleList()
        for _ in range(nb):
            self.resnet_blocks.append(nn.Sequential(
                nn.Conv2d(nf * 2, nf * 2, 3, 1, 1), nn.InstanceNorm2d(nf * 2), nn.ReLU(True),
                nn.Conv2d(nf * 2, nf * 2, 3, 1, 1), nn.InstanceNorm2d(nf * 2)))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(nf * 2, nf, 3, 2, 1, 1), nn.Conv2d(nf, nf, 3, 1, 1), nn.InstanceNorm2d(nf), nn.ReLU(True),
            nn.Conv2d(nf, 3, 7, 1, 3), nn.Tanh())

    def forward(self, input):
        x = self.down(input)
        for block in self.resnet_blocks:
            x = x + block(x)
        return self.up(x)


# ------------------------------------------------------------------ GAN Compression sub-mobile resnet

class SeparableConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, norm_layer=nn.InstanceNorm2d,
                 use_bias=True, scale_factor=1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels * scale_factor, kernel_size, stride, padding, groups=in_channels,
                      bias=use_bias),
            norm_layer(in_channels * scale_factor),
            nn.Conv2d(in_channels * scale_factor, out_channels, 1, bias=use_bias))

    def forward(self, x):
        return self.conv(x)


class SubMobileResnetBlock(nn.Module):
    def __init__(self, ic, oc, padding_type="reflect", dropout_rate=0.0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), SeparableConv2d(ic, oc, 3), nn.InstanceNorm2d(oc), nn.ReLU(True),
            nn.Dropout(dropout_rate),
            nn.ReflectionPad2d(1), SeparableConv2d(oc, ic, 3), nn.InstanceNorm2d(ic))

    def forward(self, x):
        return x + self.conv_block(x)


class SubMobileResnetGenerator(nn.Module):
    def __init__(self, config=(4, 8, 8, 6, 6, 4, 4, 4), n_blocks=3):
        super().__init__()
        c = list(config)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(3, c[0], 7), nn.InstanceNorm2d(c[0]), nn.ReLU(True)]
        model += [nn.Conv2d(c[0], c[1], 3, 2, 1), nn.InstanceNorm2d(c[1]), nn.ReLU(True)]
        model += [nn.Conv2d(c[1], c[2], 3, 2, 1), nn.InstanceNorm2d(c[2]), nn.ReLU(True)]
        for i in range(n_blocks):
            model += [SubMobileResnetBlock(c[2], c[3 + i % 3])]
        model += [nn.ConvTranspose2d(c[2], c[6], 3, 2, 1, output_padding=1), nn.InstanceNorm2d(c[6]), nn.ReLU(True)]
        model += [nn.ConvTranspose2d(c[6], c[7], 3, 2, 1, output_padding=1), nn.InstanceNorm2d(c[7]), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(c[7], 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input):
        input = input.clamp(-1, 1)
        return self.model(input)


# --------------------------------------------------------------------------- pix2pixHD global generator

class GlobalGenerator(nn.Module):
    def __init__(self, input_nc=3, output_nc=3, ngf=8, n_downsampling=2, n_blocks=2, norm_layer=nn.BatchNorm2d):
        super().__init__()
        activation = nn.ReLU(True)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0), norm_layer(ngf), activation]
        for i in range(n_downsampling):
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1),
                      norm_layer(ngf * mult * 2), activation]
        mult = 2 ** n_downsampling
        for _ in range(n_blocks):
            model += [ResnetBlock(ngf * mult, norm=norm_layer)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                         output_padding=1), norm_layer(int(ngf * mult / 2)), activation]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input):
        return self.model(input)


# ------------------------------------------------------------------------------ StarGAN (label concat)

class StarGANGenerator(nn.Module):
    def __init__(self, conv_dim=8, c_dim=3, repeat_num=2):
        super().__init__()
        layers = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False),
                  nn.InstanceNorm2d(conv_dim, affine=True, track_running_stats=True), nn.ReLU(inplace=True)]
        curr = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(curr, curr * 2, 4, 2, 1, bias=False),
                       nn.InstanceNorm2d(curr * 2, affine=True, track_running_stats=True), nn.ReLU(inplace=True)]
            curr *= 2
        for _ in range(repeat_num):
            layers.append(ResnetBlock(curr, norm=lambda c: nn.InstanceNorm2d(c, affine=True,
                                                                              track_running_stats=True)))
        for _ in range(2):
            layers += [nn.ConvTranspose2d(curr, curr // 2, 4, 2, 1, bias=False),
                       nn.InstanceNorm2d(curr // 2, affine=True, track_running_stats=True), nn.ReLU(inplace=True)]
            curr //= 2
        layers += [nn.Conv2d(curr, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x, c):
        c = c.view(c.size(0), c.size(1), 1, 1)
        c = c.repeat(1, 1, x.size(2), x.size(3))
        x = torch.cat([x, c], dim=1)
        return self.main(x)


# ------------------------------------------------------------------------------ U-Net with skip concat

class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False), nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):
    def __init__(self, n_channels=3, n_classes=3, c=8):
        super().__init__()
        self.inc = DoubleConv(n_channels, c)
        self.down1, self.down2 = Down(c, 2 * c), Down(2 * c, 4 * c)
        self.up1, self.up2 = Up(4 * c, 2 * c), Up(2 * c, c)
        self.outc = nn.Conv2d(c, n_classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        return self.outc(x)


# ------------------------------------------------------------------------------------------ SPADE-lite

class SPADE(nn.Module):
    def __init__(self, norm_nc, label_nc, nhidden=8):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, 3, padding=1)

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin, fout, label_nc):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
        self.norm_0, self.norm_1 = SPADE(fin, label_nc), SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc)

    def shortcut(self, x, seg):
        return self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x

    def actvn(self, x):
        return F.leaky_relu(x, 2e-1)

    def forward(self, x, seg):
        x_s = self.shortcut(x, seg)
        dx = self.conv_0(self.actvn(self.norm_0(x, seg)))
        dx = self.conv_1(self.actvn(self.norm_1(dx, seg)))
        return x_s + dx


class SPADEGenerator(nn.Module):
    def __init__(self, label_nc=4, nf=8, sw=4):
        super().__init__()
        self.sw = sw
        self.fc = nn.Conv2d(label_nc, 2 * nf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(2 * nf, 2 * nf, label_nc)
        self.up_0 = SPADEResnetBlock(2 * nf, nf, label_nc)
        self.up_1 = SPADEResnetBlock(nf, nf, label_nc)
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, input, z=None):
        seg = input
        x = F.interpolate(seg, size=(self.sw, self.sw))
        x = self.fc(x)
        x = self.head_0(x, seg)
        x = self.up(x)
        x = self.up_0(x, seg)
        x = self.up(x)
        x = self.up_1(x, seg)
        x = self.conv_img(F.leaky_relu(x, 2e-1))
        return torch.tanh(x)
